"""Permuted MNIST, the GEM protocol (Lopez-Paz & Ranzato, 2017, Sec. 5).

Every task, the first included, applies its own seeded permutation to the 784 pixels. Each task
draws its own ``train_per_task`` training images from MNIST's 60k (GEM's ``samples_per_task``) and
scores on ``test_per_task`` test images (GEM: the whole 10k test set).
"""

from __future__ import annotations

from typing import Literal

import torch

from lifelong.benchmarks.images import check_positive, image_tensors, subsample
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import Stream, build_stream


@BENCHMARKS.register("permuted-mnist")
def permuted_mnist(
    n_tasks: int = 20,
    train_per_task: int | None = 1000,
    test_per_task: int | None = None,
    scenario: Literal["domain", "task", "class"] = "domain",
    seed: int = 0,
    data_root: str | None = None,
) -> Stream:
    """MNIST under a new pixel permutation per task (GEM protocol; single head by default)."""
    check_positive("n_tasks", n_tasks)
    check_positive("train_per_task", train_per_task)
    check_positive("test_per_task", test_per_task)
    x_train, y_train = image_tensors("mnist", "train", data_root)
    x_test, y_test = image_tensors("mnist", "test", data_root)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for t in range(n_tasks):
        permutation = torch.randperm(28 * 28, generator=generator)
        train = subsample(len(y_train), train_per_task, generator)
        test = subsample(len(y_test), test_per_task, generator)
        parts.append(
            (
                f"permutation-{t}",
                permute(x_train[train], permutation),
                y_train[train],
                permute(x_test[test], permutation),
                y_test[test],
            )
        )
    params = dict(n_tasks=n_tasks, train_per_task=train_per_task, test_per_task=test_per_task,
                  scenario=scenario, seed=seed)
    return build_stream("permuted-mnist", scenario, parts, (1, 28, 28), params)


def permute(images: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Images ``(N, 1, 28, 28)`` with their pixels reordered by ``permutation``."""
    return images.flatten(1)[:, permutation].reshape(images.shape)
