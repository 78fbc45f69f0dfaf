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


def test_ranges_in_annotations_are_checked_and_described():
    from typing import Annotated

    from lifelong.params import AtLeastOne, Fraction, Positive, describe_type

    assert convert("n", "3", Annotated[int, AtLeastOne]) == 3
    with pytest.raises(ParamError, match=r"n=0 is out of range; allowed: >= 1"):
        convert("n", "0", Annotated[int, AtLeastOne])
    with pytest.raises(ParamError, match=r"lr=0.0 is out of range; allowed: > 0"):
        convert("lr", 0, Annotated[float, Positive])
    with pytest.raises(ParamError, match=r"allowed: >= 0 and < 1"):
        convert("dropout", "1", Annotated[float, Fraction])
    with pytest.raises(ParamError, match=r"hidden=\(10, 0\) is out of range"):
        convert("hidden", "10,0", Annotated[tuple[int, ...], AtLeastOne])
    assert convert("n", "none", Annotated[int, AtLeastOne] | None) is None
    assert describe_type(Annotated[int, AtLeastOne] | None) == "int >= 1 or none"
