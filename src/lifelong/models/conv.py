"""A small convolutional network for 28x28 (or 8x8) grey images."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from lifelong.models.network import Network
from lifelong.models.registry import MODELS
from lifelong.params import AtLeastOne


@MODELS.register("conv")
def conv(
    input_shape: tuple[int, ...],
    n_units: int,
    channels: Annotated[tuple[int, ...], AtLeastOne] = (32, 64),
    hidden: Annotated[int, AtLeastOne] = 256,
    seed: int = 0,
) -> Network:
    """Per channel width a 3x3 conv + ReLU + 2x2 max-pool, then one hidden linear layer, then the head."""
    if not channels or any(c < 1 for c in channels):
        raise ValueError(f"channels={channels} must hold positive widths")
    layers: list[nn.Module] = []
    in_channels = input_shape[0]
    for out in channels:
        layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out
    layers.append(nn.Flatten())
    if min(input_shape[1:]) < 2 ** len(channels):
        raise ValueError(f"input {input_shape} is too small for {len(channels)} pooling stages")
    with torch.no_grad():
        flat = nn.Sequential(*layers)(torch.zeros(1, *input_shape)).shape[1]
    layers += [nn.Linear(flat, hidden), nn.ReLU()]
    return Network(nn.Sequential(*layers), nn.Linear(hidden, n_units), seed)
