"""Continual-learning methods, one file each, behind the `Method` interface."""

from torch import nn

from lifelong.methods import finetune, frozen, independent, joint, restart  # noqa: F401
from lifelong.methods.base import Method
from lifelong.methods.registry import METHODS


def make_method(name: str, model: nn.Module, seed: int = 0, **params) -> Method:
    """Build method ``name`` around ``model`` with validated ``params`` (see ``lifelong list``)."""
    return METHODS.get(name)(model, seed=seed, **METHODS.resolve(name, params))


__all__ = ["METHODS", "Method", "make_method"]
