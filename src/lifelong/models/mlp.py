"""Fully connected networks (GEM's MLP: 784-100-100-10 with ReLU and Xavier init)."""

from __future__ import annotations

import math
from typing import Annotated

from torch import nn

from lifelong.models.network import Network
from lifelong.models.registry import MODELS
from lifelong.params import AtLeastOne, Fraction


@MODELS.register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    n_units: int,
    hidden: Annotated[tuple[int, ...], AtLeastOne] = (100, 100),
    dropout: Annotated[float, Fraction] = 0.0,
    seed: int = 0,
) -> Network:
    """Flatten, then Linear+ReLU per hidden width (dropout after each if > 0), then the head."""
    if any(width < 1 for width in hidden):
        raise ValueError(f"hidden={hidden} must hold positive widths")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = out
    return Network(nn.Sequential(*layers), nn.Linear(width, n_units), seed)
