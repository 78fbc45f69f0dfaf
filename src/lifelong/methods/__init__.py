"""Continual-learning methods, one file each, behind the `Method` interface.

Every module of this package is imported here, so a new method file registers itself (with
``@METHODS.register("name")``) just by being added.
"""

import importlib
import pkgutil

from torch import nn

from lifelong.methods.base import Method
from lifelong.methods.registry import METHODS

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")


def make_method(name: str, model: nn.Module, seed: int = 0, **params) -> Method:
    """Build method ``name`` around ``model`` with validated ``params`` (see ``lifelong list``)."""
    return METHODS.get(name)(model, seed=seed, **METHODS.resolve(name, params))


__all__ = ["METHODS", "Method", "make_method"]
