"""Backbones and heads: an MLP (GEM's default) and a small conv net, sized to a stream."""

from lifelong.models import conv, mlp, transformer  # noqa: F401  (registers the models)
from lifelong.models.network import Network
from lifelong.models.registry import MODELS


def make_model(
    name: str, input_shape: tuple[int, ...], n_units: int, seed: int = 0, **params
) -> Network:
    """Build model ``name`` for inputs of ``input_shape`` and ``n_units`` outputs, drawn from ``seed``."""
    return MODELS.get(name)(input_shape, n_units, seed=seed, **MODELS.resolve(name, params))


__all__ = ["MODELS", "Network", "make_model"]
