"""Turning a source dataset into float image tensors, and seeded subsampling."""

from __future__ import annotations

import numpy as np
import torch


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


def check_positive(field: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{field}={value} must be a positive integer")
