"""Permuted MNIST, the GEM protocol (Lopez-Paz & Ranzato, 2017, Sec. 5).

Every task, the first included, applies its own seeded permutation to the 784 pixels. Each task
draws its own ``train_per_task`` training images from MNIST's 60k (GEM's ``samples_per_task``) and
scores on ``test_per_task`` test images (default: GEM's whole 10k test set).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import torch

from lifelong.benchmarks.images import transformed_mnist
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import Stream
from lifelong.params import AtLeastOne


@BENCHMARKS.register("permuted-mnist")
def permuted_mnist(
    n_tasks: Annotated[int, AtLeastOne] = 20,
    train_per_task: Annotated[int, AtLeastOne] | None = 1000,
    test_per_task: Annotated[int, AtLeastOne] | None = None,
    scenario: Literal["domain", "task", "class"] = "domain",
    seed: int = 0,
    data_root: str | None = None,
) -> Stream:
    """MNIST under a new pixel permutation per task (GEM protocol; single head by default)."""
    generator = torch.Generator().manual_seed(seed)
    permutations = [torch.randperm(28 * 28, generator=generator) for _ in range(n_tasks)]
    transforms = [(f"permutation-{t}", partial(permute, permutation=p))
                  for t, p in enumerate(permutations)]
    params = dict(n_tasks=n_tasks, train_per_task=train_per_task, test_per_task=test_per_task,
                  scenario=scenario, seed=seed)
    return transformed_mnist("permuted-mnist", transforms, train_per_task, test_per_task,
                             scenario, generator, data_root, params)


def permute(images: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Images ``(N, 1, 28, 28)`` with their pixels reordered by ``permutation``."""
    return images.flatten(1)[:, permutation].reshape(images.shape)
