"""Which runs belong together, and what to call each group.

A table holds the runs of one benchmark with the same benchmark settings; a row holds the runs of
one method with the same settings. Seeds, task orders and the data directory never split a group:
they are what a row averages over. Labels name only the settings that vary, e.g.
``permuted-mnist (n_tasks=3)`` or ``finetune (lr=0.1)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lifelong.report.runs import Run

#: Benchmark parameters that never split a table: rows average over them or they name a place.
BENCHMARK_IGNORED = frozenset({"seed", "data_root"})


def benchmark_settings(run: Run) -> dict[str, Any]:
    """The benchmark parameters that define the task stream (without seed or data location).

    The number of tasks run is included as ``tasks`` when the benchmark has no ``n_tasks``.
    """
    params = run.config.get("benchmark_params") or {}
    settings = {k: v for k, v in params.items() if k not in BENCHMARK_IGNORED}
    if "n_tasks" not in settings:
        settings["tasks"] = run.n_tasks
    return settings


def row_settings(run: Run) -> dict[str, Any]:
    """What defines a row besides the method name: method and model settings, epochs, batch size."""
    config = run.config
    settings: dict[str, Any] = dict(config.get("method_params") or {})
    settings["model"] = config.get("model")
    for name, value in (config.get("model_params") or {}).items():
        settings[f"model.{name}"] = value
    for name in ("epochs", "batch_size", "device"):
        settings[name] = config.get(name)
    return settings


def varying_keys(settings: Sequence[dict[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every dict (a missing key counts as a value)."""
    keys: dict[str, None] = {}
    for entry in settings:
        keys.update(dict.fromkeys(entry))
    return [k for k in keys if len({canonical(s[k]) if k in s else None for s in settings}) > 1]


def group_key(name: str, settings: dict[str, Any], keys: Sequence[str]) -> tuple:
    """A hashable key: ``name`` and the values of ``keys`` (those that vary)."""
    return (name, *((k, canonical(settings.get(k))) for k in keys))


def label(name: str, settings: dict[str, Any], keys: Sequence[str]) -> str:
    """``name (k=v, ...)`` over the varying ``keys``; just ``name`` when none vary."""
    shown = [f"{k}={format_value(settings.get(k))}" for k in keys if k in settings]
    return f"{name} ({', '.join(shown)})" if shown else name


def sort_key(name: str, settings: dict[str, Any], keys: Sequence[str]) -> tuple:
    """Orders groups by name, then numerically (or alphabetically) by each varying value."""
    return (name, *(_orderable(settings.get(k)) for k in keys))


def canonical(value: Any) -> str:
    """A string equal for equal values (lists, dicts and numbers included)."""
    return json.dumps(value, sort_keys=True, default=str)


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _orderable(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, canonical(value))
