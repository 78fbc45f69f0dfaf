"""Tasks, streams and the output layout that maps labels to output units.

A `Stream` is an ordered list of `Task`s plus its scenario:

- ``task``: task-incremental; the task id is given at test time, each task is scored only over
  its own output units (a multi-head network).
- ``domain``: domain-incremental; every task uses the same labels and the same output units (a
  single head), and no task id is needed.
- ``class``: class-incremental; every task brings new classes, no task id at test time, so
  predictions are made over all output units.

Labels are stored as *output-unit indices* (``Task.y_train``/``y_test``), so a method computes its
loss as ``cross_entropy(masked_logits, y)`` in every scenario. When tasks have disjoint classes
(split benchmarks) units are the original class ids; when classes repeat across tasks (permuted
MNIST as task-incremental) each task gets its own block of units, i.e. its own head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

SCENARIOS = ("task", "domain", "class")
MASK_FILL = -1e10  # the GEM code's fill value for logits outside the allowed units


@dataclass(frozen=True)
class HeadLayout:
    """Which output units belong to which task, and which units each scenario scores.

    ``task_units[t]`` are the unit indices of task ``t`` (position in the stream). Masks are
    boolean tensors over ``n_units``; ``None`` means every unit is allowed (no masking needed).
    """

    scenario: str
    n_units: int
    task_units: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario={self.scenario!r} is not one of {SCENARIOS}")
        masks = []
        for units in self.task_units:
            mask = torch.zeros(self.n_units, dtype=torch.bool)
            mask[list(units)] = True
            masks.append(mask)
        object.__setattr__(self, "_task_masks", masks)
        seen, cumulative = torch.zeros(self.n_units, dtype=torch.bool), []
        for mask in masks:
            seen = seen | mask
            cumulative.append(seen.clone())
        object.__setattr__(self, "_seen_masks", cumulative)

    @property
    def n_tasks(self) -> int:
        return len(self.task_units)

    @property
    def disjoint(self) -> bool:
        """True when no two tasks share an output unit (so task-agnostic scoring is meaningful)."""
        flat = [u for units in self.task_units for u in units]
        return len(flat) == len(set(flat))

    def task_mask(self, task_id: int) -> torch.Tensor:
        """Units of task ``task_id`` alone."""
        return self._task_masks[task_id]  # type: ignore[attr-defined]

    def train_mask(self, task_id: int) -> torch.Tensor | None:
        """Units a method's loss is computed over while training task ``task_id``.

        Task-incremental: the task's own units. Domain-incremental: all (shared head).
        Class-incremental: the units of every task seen so far (the "active classes").
        """
        if self.scenario == "task":
            return self._full_or(self.task_mask(task_id))
        if self.scenario == "class":
            return self._full_or(self._seen_masks[task_id])  # type: ignore[attr-defined]
        return None

    def replay_mask(self, sample_task: int, current_task: int) -> torch.Tensor | None:
        """Units for the loss on an old example of ``sample_task`` while training ``current_task``.

        Task-incremental: the example's own task's units; class-incremental: every unit seen so far;
        domain-incremental: all. (Used by joint training and by replay methods.)
        """
        if self.scenario == "task":
            return self.train_mask(sample_task)
        return self.train_mask(current_task)

    def replay_masks(self, current_task: int) -> torch.Tensor | None:
        """Row ``t``: `replay_mask` of an example of task ``t <= current_task`` (``None``: no mask).

        The (tasks, units) lookup replay methods index with a batch's task ids.
        """
        masks = [self.replay_mask(t, current_task) for t in range(current_task + 1)]
        if all(mask is None for mask in masks):
            return None
        full = torch.ones(self.n_units, dtype=torch.bool)
        return torch.stack([full if mask is None else mask for mask in masks])

    def eval_mask(self, task_id: int | None) -> torch.Tensor | None:
        """Units scored at test time: the task's own units when the task id is given, else all."""
        if task_id is None:
            return None
        return self._full_or(self.task_mask(task_id))

    def _full_or(self, mask: torch.Tensor) -> torch.Tensor | None:
        return None if bool(mask.all()) else mask


def mask_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Logits with the units outside ``mask`` pushed to ``MASK_FILL`` (no-op for ``None``)."""
    if mask is None:
        return logits
    return logits.masked_fill(~mask.to(logits.device), MASK_FILL)


@dataclass
class Task:
    """One task of a stream: its data (labels as output units) and where its units are."""

    id: int
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[int, ...]  # the original class ids of the source dataset
    layout: HeadLayout = field(repr=False)

    @property
    def train_mask(self) -> torch.Tensor | None:
        return self.layout.train_mask(self.id)

    def __repr__(self) -> str:
        return (
            f"Task(id={self.id}, name={self.name!r}, train={len(self.y_train)}, "
            f"test={len(self.y_test)}, classes={list(self.classes)})"
        )


@dataclass
class Stream:
    """An ordered sequence of tasks with a scenario; the unit of a continual-learning run."""

    name: str
    scenario: str
    tasks: list[Task]
    input_shape: tuple[int, ...]
    params: dict = field(default_factory=dict)

    @property
    def layout(self) -> HeadLayout:
        return self.tasks[0].layout

    @property
    def n_units(self) -> int:
        return self.layout.n_units

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]

    def first(self, n: int) -> Stream:
        """The stream of its first ``n`` tasks (same output units)."""
        if not 1 <= n <= self.n_tasks:
            raise ValueError(f"n={n} must be between 1 and {self.n_tasks}")
        layout = replace(self.layout, task_units=self.layout.task_units[:n])
        tasks = [replace(task, layout=layout) for task in self.tasks[:n]]
        return Stream(self.name, self.scenario, tasks, self.input_shape, dict(self.params))

    def reordered(self, order: Sequence[int]) -> Stream:
        """The same tasks in another order; task ids become positions in the new order."""
        if sorted(order) != list(range(self.n_tasks)):
            raise ValueError(
                f"order={list(order)} must be a permutation of 0..{self.n_tasks - 1}"
            )
        old = self.layout
        layout = replace(old, task_units=tuple(old.task_units[i] for i in order))
        tasks = [replace(self.tasks[i], id=pos, layout=layout) for pos, i in enumerate(order)]
        params = {**self.params, "order": [self.tasks[i].name for i in order]}
        return Stream(self.name, self.scenario, tasks, self.input_shape, params)


def build_stream(
    name: str,
    scenario: str,
    parts: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    input_shape: tuple[int, ...],
    params: dict | None = None,
) -> Stream:
    """Assemble a stream from per-task ``(name, x_train, labels_train, x_test, labels_test)``.

    Labels are the source dataset's class ids. Units are assigned by scenario: ``domain`` maps
    every task onto one shared head (labels are re-indexed ``0..C-1`` in sorted class order);
    ``task``/``class`` keep class ids as units when tasks' classes are disjoint, otherwise give
    each task its own block of units.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario={scenario!r} is not one of {SCENARIOS}")
    class_sets = [tuple(sorted(set(part[2].tolist()) | set(part[4].tolist()))) for part in parts]
    flat = [c for classes in class_sets for c in classes]
    if scenario == "domain":
        shared = tuple(sorted(set(flat)))
        unit_of = [{c: i for i, c in enumerate(shared)} for _ in parts]
        task_units = tuple(tuple(range(len(shared))) for _ in parts)
        n_units = len(shared)
    elif len(flat) == len(set(flat)):
        unit_of = [{c: c for c in classes} for classes in class_sets]
        task_units = tuple(class_sets)
        n_units = max(flat) + 1
    else:
        unit_of, units, offset = [], [], 0
        for classes in class_sets:
            unit_of.append({c: offset + i for i, c in enumerate(classes)})
            units.append(tuple(range(offset, offset + len(classes))))
            offset += len(classes)
        task_units, n_units = tuple(units), offset
    layout = HeadLayout(scenario, n_units, task_units)
    tasks = []
    for t, (task_name, xtr, ltr, xte, lte) in enumerate(parts):
        lookup = torch.full((max(class_sets[t]) + 1,), -1, dtype=torch.long)
        for c, u in unit_of[t].items():
            lookup[c] = u
        tasks.append(
            Task(t, task_name, xtr, lookup[ltr], xte, lookup[lte], class_sets[t], layout)
        )
    return Stream(name, scenario, tasks, input_shape, dict(params or {}))
