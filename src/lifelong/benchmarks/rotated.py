"""Rotated MNIST, the GEM protocol (Lopez-Paz & Ranzato, 2017, Sec. 5).

Task ``t`` of ``T`` rotates every image by one angle drawn uniformly from the ``t``-th of ``T``
equal bins of ``[min_degrees, max_degrees)`` (GEM's ``mnist_rotations.py``; the draw is seeded here,
which the original code forgot). Rotation is bilinear about the image centre, zero-filled.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from lifelong.benchmarks.images import transformed_mnist
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import Stream
from lifelong.params import AtLeastOne


@BENCHMARKS.register("rotated-mnist")
def rotated_mnist(
    n_tasks: Annotated[int, AtLeastOne] = 20,
    train_per_task: Annotated[int, AtLeastOne] | None = 1000,
    test_per_task: Annotated[int, AtLeastOne] | None = None,
    min_degrees: float = 0.0,
    max_degrees: float = 180.0,
    scenario: Literal["domain", "task", "class"] = "domain",
    seed: int = 0,
    data_root: str | None = None,
) -> Stream:
    """MNIST rotated by a seeded angle from the task's own bin of [0, 180) degrees."""
    if not min_degrees < max_degrees:
        raise ValueError(f"min_degrees={min_degrees} must be below max_degrees={max_degrees}")
    generator = torch.Generator().manual_seed(seed)
    angles = task_angles(n_tasks, min_degrees, max_degrees, generator)
    transforms = [(f"rotation-{angle:.1f}", partial(rotate, degrees=angle)) for angle in angles]
    params = dict(n_tasks=n_tasks, train_per_task=train_per_task, test_per_task=test_per_task,
                  min_degrees=min_degrees, max_degrees=max_degrees, scenario=scenario, seed=seed,
                  angles=angles)
    return transformed_mnist("rotated-mnist", transforms, train_per_task, test_per_task,
                             scenario, generator, data_root, params)


def task_angles(
    n_tasks: int, low: float, high: float, generator: torch.Generator
) -> list[float]:
    """One angle per task, uniform within the task's bin: ``low + (t + u) * (high - low) / T``."""
    width = (high - low) / n_tasks
    draws = torch.rand(n_tasks, generator=generator, dtype=torch.float64)
    return [low + (t + float(u)) * width for t, u in enumerate(draws)]


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images ``(N, C, H, W)`` rotated by ``degrees`` about their centre (bilinear, zero fill)."""
    radians = math.radians(degrees)
    cos, sin = math.cos(radians), math.sin(radians)
    theta = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
