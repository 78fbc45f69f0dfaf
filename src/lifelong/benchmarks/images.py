"""Turning a source dataset into float image tensors, seeded subsampling, and MNIST variants."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from lifelong.benchmarks.stream import Stream, build_stream

ImageTransform = Callable[[torch.Tensor], torch.Tensor]


def image_tensors(name: str, split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of dataset ``name`` as float32 ``(N, 1, H, W)`` in [0, 1], and int64 labels."""
    from lifelong.data import load_dataset  # imported here: `lifelong.data` is only needed to build

    dataset = load_dataset(name, root=root)
    images = dataset.x_train if split == "train" else dataset.x_test
    labels = dataset.y_train if split == "train" else dataset.y_test
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(dataset.pixel_max)
    return x.unsqueeze(1), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def subsample(n_total: int, n: int | None, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices drawn without replacement (all, shuffled, when ``n`` is None or too large)."""
    order = torch.randperm(n_total, generator=generator)
    return order if n is None or n >= n_total else order[:n]



def transformed_mnist(
    benchmark: str,
    transforms: Sequence[tuple[str, ImageTransform]],
    train_per_task: int | None,
    test_per_task: int | None,
    scenario: str,
    generator: torch.Generator,
    data_root: str | None,
    params: dict,
) -> Stream:
    """One task per ``(name, transform)``: MNIST images drawn for that task, then transformed.

    Each task draws its own ``train_per_task`` training and ``test_per_task`` test images (GEM's
    ``samples_per_task``; GEM scores on the whole test set), in task order from ``generator``.
    """
    x_train, y_train = image_tensors("mnist", "train", data_root)
    x_test, y_test = image_tensors("mnist", "test", data_root)
    parts = []
    for name, transform in transforms:
        train = subsample(len(y_train), train_per_task, generator)
        test = subsample(len(y_test), test_per_task, generator)
        parts.append((name, transform(x_train[train]), y_train[train],
                      transform(x_test[test]), y_test[test]))
    return build_stream(benchmark, scenario, parts, (1, 28, 28), params)
