from typing import Literal

import pytest

from lifelong.params import ParamError, Registry, convert


def test_convert_types():
    assert convert("x", "3", int) == 3
    assert convert("x", "0.5", float) == 0.5
    assert convert("x", "yes", bool) is True
    assert convert("x", "100,50", tuple[int, ...]) == (100, 50)
    assert convert("x", "none", int | None) is None
    assert convert("x", "7", int | None) == 7
    assert convert("x", "task", Literal["task", "class"]) == "task"


@pytest.mark.parametrize("value, annotation, message", [
    ("abc", int, "x='abc' is not a int"),
    ("1.5", int, "is not a int"),
    ("maybe", bool, "not a boolean"),
    ("other", Literal["task", "class"], "allowed values: task, class"),
])
def test_convert_errors_name_field_and_allowed(value, annotation, message):
    with pytest.raises(ParamError, match=message):
        convert("x", value, annotation)


def test_registry_resolves_defaults_and_rejects_unknown():
    registry = Registry("thing", skip=("model",))

    @registry.register("a")
    def make_a(model, lr: float = 0.1, hidden: tuple[int, ...] = (100, 100)):
        """An A."""

    assert registry.resolve("a", {"lr": "0.5"}) == {"lr": 0.5, "hidden": (100, 100)}
    with pytest.raises(ParamError, match="thing 'a' has no parameter 'lrr'; allowed: lr, hidden"):
        registry.resolve("a", {"lrr": 1})
    with pytest.raises(ParamError, match="thing='b' is unknown; allowed values: a"):
        registry.get("b")
    assert "lr=0.1" in registry.describe() and "An A." in registry.describe()
