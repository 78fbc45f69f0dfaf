"""Mixture: one task per dataset, after the HAT paper's mixture (Serrà et al., ICML 2018, Sec. 4.1).

HAT's mixture (official code: github joansj/hat, ``src/dataloaders/mixture.py``) has eight tasks,
one per dataset: CIFAR-10, CIFAR-100, MNIST, SVHN, Fashion-MNIST, German traffic signs (43
classes), FaceScrub (100 classes) and notMNIST. Every image is 3x32x32 (MNIST and Fashion-MNIST
zero-padded by 2 pixels and copied into three channels), each dataset is standardised with its own
mean and std (MNIST 0.1 / 0.2752 and Fashion-MNIST 0.2190 / 0.3318, computed with the padding),
the task order is shuffled with the run's seed, 15% of every training set is held out for
validation, and the network is multi-head: task-incremental, one head of ``ncla`` units per task.

Only MNIST, Fashion-MNIST and scikit-learn's 8x8 digits are available offline here, so this mixture
has (up to) those three tasks of 10 classes, in the order of ``datasets``:

- Images are ``1x28x28`` float in [0, 1], like the other MNIST benchmarks (no padding to 32: the
  network takes every task at MNIST's size). The digits (8x8, values 0..16) are divided by 16 and
  upscaled to 28x28 over the whole frame by bilinear interpolation with pixel centres aligned
  (``F.interpolate(mode="bilinear", align_corners=False)``, the border replicated): every output
  pixel is a convex combination of at most four input pixels, so values stay in [0, 1].
- ``normalize=True`` standardises each dataset as HAT does, ``(x - mean) / std`` with the mean and
  std of that dataset's whole 28x28 training set (MNIST: 0.1307 / 0.3081, HAT's values "without
  padding"), recorded in ``stream.params["normalization"]``. Off by default, so values stay in
  [0, 1] like every other benchmark here.
- Units: ``scenario="task"`` (HAT's setting) scores each task over its own block of 10 units, task
  ``t`` (in the listed order) on units ``10t .. 10t+9`` (``build_stream`` gives every task its own
  block because the class ids 0..9 repeat across datasets). ``scenario="class"`` keeps those 30
  disjoint units and predicts over all of them with no task id (class-incremental). ``domain`` is
  refused: one shared head would put the digit 0 and the T-shirt on one unit.
- ``train_per_task`` / ``test_per_task`` draw a stratified subsample (:func:`stratified_subsample`)
  with a generator seeded from ``seed``, the dataset's name and the split, so a dataset's draw does
  not depend on which other datasets are listed or in what order. At least 10 (one per class), so
  every task keeps all its classes and its block of 10 units. ``None`` takes the whole split.
- No validation split is held out, as in the other benchmarks here, and the order is the listed
  one; other orders (HAT shuffles with the seed) come from ``Stream.reordered`` or a run's
  ``order``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from lifelong.benchmarks.images import image_tensors
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import Stream, build_stream
from lifelong.params import Range

DATASETS = ("mnist", "fashion-mnist", "digits")
N_CLASSES = 10  # every dataset of the mixture has 10 classes
SIZE = 28
MixtureDataset = Literal["mnist", "fashion-mnist", "digits"]


@BENCHMARKS.register("mixture")
def mixture(
    datasets: tuple[MixtureDataset, ...] = DATASETS,
    train_per_task: Annotated[int, Range(N_CLASSES)] | None = None,
    test_per_task: Annotated[int, Range(N_CLASSES)] | None = None,
    scenario: Literal["task", "class"] = "task",
    normalize: bool = False,
    seed: int = 0,
    data_root: str | None = None,
) -> Stream:
    """HAT's mixture on MNIST, Fashion-MNIST and 8x8 digits (upscaled): one 10-class task each."""
    if isinstance(datasets, str):  # "mnist,digits", as on the command line
        datasets = tuple(name.strip() for name in datasets.split(",") if name.strip())
    datasets = tuple(datasets)  # a list when the config went through JSON
    _check(datasets, train_per_task, test_per_task, scenario)
    parts, normalization = [], {}
    for name in datasets:
        x_train, y_train = _images(name, "train", data_root)
        x_test, y_test = _images(name, "test", data_root)
        train = stratified_subsample(y_train, train_per_task, _generator(seed, name, "train"))
        test = stratified_subsample(y_test, test_per_task, _generator(seed, name, "test"))
        if normalize:  # the statistics of the whole training set, whatever the subsample
            mean, std = _mean_std(x_train)
            normalization[name] = {"mean": mean, "std": std}
            x_train, x_test = (x_train[train] - mean) / std, (x_test[test] - mean) / std
        else:
            x_train, x_test = x_train[train], x_test[test]
        parts.append((name, x_train, y_train[train], x_test, y_test[test]))
    params = dict(datasets=list(datasets), train_per_task=train_per_task,
                  test_per_task=test_per_task, scenario=scenario, normalize=normalize, seed=seed)
    if normalize:
        params["normalization"] = normalization
    return build_stream("mixture", scenario, parts, (1, SIZE, SIZE), params)


def _check(datasets: tuple, train_per_task: int | None, test_per_task: int | None,
           scenario: str) -> None:
    """The checks ``make_stream`` does through the annotations, for direct calls too."""
    if not datasets:
        raise ValueError(f"datasets is empty; give one or more of: {', '.join(DATASETS)}")
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"datasets has {name!r}; allowed values: {', '.join(DATASETS)}")
    repeated = sorted({name for name in datasets if datasets.count(name) > 1})
    if repeated:
        raise ValueError(f"datasets lists {repeated[0]!r} twice; each dataset is one task")
    for field, n in (("train_per_task", train_per_task), ("test_per_task", test_per_task)):
        if n is not None and n < N_CLASSES:
            raise ValueError(f"{field}={n} must be at least {N_CLASSES} (one image per class)")
    if scenario not in ("task", "class"):
        raise ValueError(f"scenario={scenario!r} does not apply to the mixture (its tasks' classes "
                         "differ in meaning); use task or class")


def _images(name: str, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset ``name``'s ``split`` as ``(N, 1, 28, 28)`` floats in [0, 1], and its labels."""
    x, y = image_tensors(name, split, root)
    return upscale(x), y


def upscale(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Images ``(N, C, H, W)`` resized to ``size x size`` (bilinear, centres aligned); as-is if so."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def stratified_subsample(labels: torch.Tensor, n: int | None,
                         generator: torch.Generator) -> torch.Tensor:
    """``n`` indices of ``labels``, each class in proportion to its frequency (all when ``n`` is None).

    The examples are shuffled by ``generator``; the ``r``-th example of a class of ``n_c`` (in
    shuffled order) gets the key ``r / n_c`` and the ``n`` smallest keys are taken (ties by
    shuffled position). Every class gets one example before any gets two, and class ``c`` gets
    ``k_c`` with ``n n_c / N - C n_c / N <= k_c <= n n_c / N + 1`` (``C`` classes, ``N`` examples).
    The draw for ``n`` is a prefix of the draw for ``n + 1``.
    """
    order = torch.randperm(len(labels), generator=generator)
    if n is None or n >= len(labels):
        return order
    shuffled = labels[order]
    counts = torch.bincount(shuffled)
    by_class = torch.sort(shuffled, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(shuffled)
    rank[by_class] = torch.arange(len(shuffled)) - starts[shuffled[by_class]]
    key = rank.double() / counts[shuffled].double()
    return order[torch.sort(key, stable=True).indices[:n]]


def _generator(seed: int, name: str, split: str) -> torch.Generator:
    """A generator that depends only on ``seed``, the dataset and the split."""
    digest = hashlib.sha256(f"mixture:{name}:{split}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _mean_std(images: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) std of every pixel of ``images``, summed in float64."""
    total = s = ss = 0.0
    for chunk in images.split(10_000):
        values = chunk.double()
        total, s, ss = total + values.numel(), s + float(values.sum()), ss + float(values.square().sum())
    mean = s / total
    return mean, math.sqrt(ss / total - mean * mean)

