"""Named components (benchmarks, methods, models) and their typed, validated parameters.

Every component is a plain callable whose keyword arguments are its parameters; annotations give
their types and defaults give the paper's defaults. `Registry` lists them and turns strings from the
command line or a config file into checked values, with errors that name the field, the bad value
and what is allowed.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin


class ParamError(ValueError):
    """A bad component name, parameter name or parameter value (shown to users as one line)."""


@dataclass(frozen=True)
class Range:
    """A bound on a numeric parameter, written into its annotation: ``Annotated[int, Range(1)]``.

    Checked when a value is converted, so a config is rejected before anything runs.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, field: str, value: Any) -> None:
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is None:
                continue
            too_low = self.low is not None and (v <= self.low if self.low_open else v < self.low)
            too_high = self.high is not None and (v >= self.high if self.high_open else v > self.high)
            if too_low or too_high:
                raise ParamError(f"{field}={value!r} is out of range; allowed: {self.describe()}")

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


#: common bounds
AtLeastOne = Range(1)
Positive = Range(0, low_open=True)
NonNegative = Range(0)
Fraction = Range(0, 1, high_open=True)


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any

    @property
    def type_name(self) -> str:
        return describe_type(self.annotation)


def describe_type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        bounds = [a.describe() for a in annotation.__metadata__ if isinstance(a, Range)]
        return describe_type(args[0]) + (f" {' '.join(bounds)}" if bounds else "")
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args if a is not type(None)) + " or none"
    if origin is tuple:
        element = describe_type(args[0])
        return f"comma-separated {element}s" if element.isidentifier() else f"comma-separated ({element})"
    return getattr(annotation, "__name__", str(annotation))


def convert(field: str, value: Any, annotation: Any) -> Any:
    """``value`` (a string from the CLI or a YAML/Python value) converted to ``annotation``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        converted = convert(field, value, args[0])
        for extra in annotation.__metadata__:
            if isinstance(extra, Range):
                extra.check(field, converted)
        return converted
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None: X's own error says more
            return convert(field, value, options[0])
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(field, value, arg)
            except ParamError as error:
                errors.append(str(error))
        raise ParamError(f"{field}={value!r} is not {describe_type(annotation)}")
    if origin is Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        allowed = ", ".join(str(a) for a in args)
        raise ParamError(f"{field}={value!r} is not allowed; allowed values: {allowed}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return tuple(convert(field, item, args[0]) for item in items if str(item).strip() != "")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ParamError(f"{field}={value!r} is not a boolean (true/false)")
    if annotation in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = annotation(value) if not isinstance(value, str) else annotation(value.strip())
        except (TypeError, ValueError):
            raise ParamError(f"{field}={value!r} is not a {annotation.__name__}") from None
        if annotation is int and isinstance(value, float) and value != int(value):
            raise ParamError(f"{field}={value!r} is not an int")
        return number
    if annotation is str:
        return str(value)
    return value


class Registry:
    """Name -> callable, with introspected parameters.

    ``skip`` names leading arguments supplied by the library rather than the user (for example
    the model a method wraps), which are not parameters.
    """

    def __init__(self, kind: str, skip: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.skip = skip
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ParamError(
                f"{self.kind}={name!r} is unknown; allowed values: {', '.join(self.names)}"
            )
        return self._entries[name]

    def params(self, name: str) -> list[Param]:
        target = self.get(name)
        signature = inspect.signature(target)
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target,
                                      include_extras=True)
        out = []
        for pname, parameter in signature.parameters.items():
            if pname in self.skip or parameter.kind in (
                parameter.VAR_POSITIONAL,
                parameter.VAR_KEYWORD,
            ):
                continue
            default = None if parameter.default is parameter.empty else parameter.default
            out.append(Param(pname, hints.get(pname, str), default))
        return out

    def resolve(self, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Full, converted parameters of ``name``: defaults overridden by ``values``."""
        params = {p.name: p for p in self.params(name)}
        unknown = [key for key in values if key not in params]
        if unknown:
            allowed = ", ".join(params) or "(none)"
            raise ParamError(
                f"{self.kind} {name!r} has no parameter {unknown[0]!r}; allowed: {allowed}"
            )
        resolved = {key: p.default for key, p in params.items()}
        for key, value in values.items():
            resolved[key] = convert(key, value, params[key].annotation)
        return resolved

    def describe(self) -> str:
        """Text listing of every entry with its parameters and defaults (for `lifelong list`)."""
        lines = []
        for name in self.names:
            doc = (inspect.getdoc(self._entries[name]) or "").split("\n")[0]
            lines.append(f"  {name:<22} {doc}")
            for p in self.params(name):
                lines.append(f"      {p.name}={p.default!r}  ({p.type_name})")
        return "\n".join(lines)
