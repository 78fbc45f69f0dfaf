"""Split benchmarks: a classification dataset cut into tasks of disjoint classes.

Split MNIST / Fashion-MNIST / digits (Zenke et al., 2017; van de Ven & Tolias, 2019): 5 tasks of 2
classes, ``(0, 1), (2, 3), ...`` by default. Task-incremental by default (each task scored over its
own two units); ``scenario=class`` scores over all units with no task id. ``class_seed`` shuffles
which classes go together.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from lifelong.benchmarks.images import image_tensors, subsample
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import Stream, build_stream
from lifelong.params import AtLeastOne


def split_stream(
    benchmark: str,
    dataset: str,
    classes_per_task: int,
    train_per_task: int | None,
    test_per_task: int | None,
    scenario: str,
    seed: int,
    class_seed: int | None,
    data_root: str | None,
) -> Stream:
    if scenario == "domain":
        raise ValueError("scenario='domain' does not apply to split benchmarks; use task or class")
    x_train, y_train = image_tensors(dataset, "train", data_root)
    x_test, y_test = image_tensors(dataset, "test", data_root)
    n_classes = int(y_train.max()) + 1
    if n_classes % classes_per_task:
        raise ValueError(
            f"classes_per_task={classes_per_task} must divide the {n_classes} classes of {dataset}"
        )
    class_order = list(range(n_classes))
    if class_seed is not None:
        shuffle = torch.randperm(n_classes, generator=torch.Generator().manual_seed(class_seed))
        class_order = shuffle.tolist()
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n_classes, classes_per_task):
        classes = class_order[start:start + classes_per_task]
        train = _pick(y_train, classes, train_per_task, generator)
        test = _pick(y_test, classes, test_per_task, generator)
        name = "-".join(str(c) for c in classes)
        parts.append((name, x_train[train], y_train[train], x_test[test], y_test[test]))
    params = dict(classes_per_task=classes_per_task, train_per_task=train_per_task,
                  test_per_task=test_per_task, scenario=scenario, seed=seed, class_seed=class_seed)
    return build_stream(benchmark, scenario, parts, tuple(x_train.shape[1:]), params)


def _pick(labels: torch.Tensor, classes: list[int], n: int | None, generator) -> torch.Tensor:
    """Indices of the examples of ``classes``, shuffled, at most ``n`` of them."""
    members = torch.isin(labels, torch.tensor(classes)).nonzero().squeeze(1)
    return members[subsample(len(members), n, generator)]


def _register(benchmark: str, dataset: str, summary: str) -> None:
    def make(
        classes_per_task: Annotated[int, AtLeastOne] = 2,
        train_per_task: Annotated[int, AtLeastOne] | None = None,
        test_per_task: Annotated[int, AtLeastOne] | None = None,
        scenario: Literal["task", "class"] = "task",
        seed: int = 0,
        class_seed: int | None = None,
        data_root: str | None = None,
    ) -> Stream:
        return split_stream(benchmark, dataset, classes_per_task, train_per_task, test_per_task,
                            scenario, seed, class_seed, data_root)

    make.__doc__ = summary
    make.__name__ = make.__qualname__ = benchmark.replace("-", "_")
    BENCHMARKS.register(benchmark)(make)


_register("split-mnist", "mnist", "MNIST as 5 tasks of 2 digits (task-incremental by default).")
_register("split-fashion-mnist", "fashion-mnist",
          "Fashion-MNIST as 5 tasks of 2 classes (task-incremental by default).")
_register("split-digits", "digits",
          "scikit-learn's 8x8 digits as 5 tasks of 2 digits: tiny and fast, for tests and demos.")
