"""Runs grouped into comparison tables: one per benchmark, one row per method, mean ± 95% CI.

Each cell summarizes one metric over the runs of a row (its seeds and task orders) with
`lifelong.report.stats.summarize`. Rows also give the mean accuracy matrix and capacity curves
that the plots draw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifelong.report import grouping
from lifelong.report.runs import Run, as_number
from lifelong.report.stats import Summary, summarize


@dataclass(frozen=True)
class Metric:
    """A table column: its key in csv/json, its title, how to show it and how to read it."""

    key: str
    title: str
    kind: str  # "accuracy", "signed", "seconds" or "megabytes": decides the printed precision
    read: Callable[[Run], float | None]
    optional: bool = False  # shown only in tables where some run has it
    higher_is_better: bool = True


def _metric(name: str) -> Callable[[Run], float | None]:
    return lambda run: as_number(run.metrics.get(name))


METRICS: tuple[Metric, ...] = (
    Metric("acc", "ACC", "accuracy", _metric("acc")),
    Metric("bwt", "BWT", "signed", _metric("bwt")),
    Metric("fwt", "FWT", "signed", _metric("fwt")),
    Metric("forgetting", "forgetting", "signed", _metric("forgetting"), higher_is_better=False),
    Metric("time_s", "time (s)", "seconds", lambda run: run.total_seconds, higher_is_better=False),
    Metric("peak_memory_mb", "memory (MB)", "megabytes", lambda run: run.peak_memory_mb,
           higher_is_better=False),
    Metric("acc_task_agnostic", "ACC task-agnostic", "accuracy", _metric("acc_task_agnostic"), True),
    Metric("acc_task_aware", "ACC task-aware", "accuracy", _metric("acc_task_aware"), True),
)


@dataclass
class Row:
    """The runs of one method with one setting, and a summary of each metric over them."""

    label: str
    method: str
    settings: dict[str, Any]  # only the settings that vary between rows of this method
    runs: list[Run]
    cells: dict[str, Summary] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    def matrix_runs(self) -> list[Run]:
        """The runs with the most common number of tasks (all of them, within one table)."""
        size = Counter(run.n_tasks for run in self.runs).most_common(1)[0][0]
        return [run for run in self.runs if run.n_tasks == size]

    def mean_accuracy_matrix(self) -> np.ndarray:
        """R[i, j] averaged over the runs (NaN where no run recorded it)."""
        stack = np.stack([run.accuracy_matrix for run in self.matrix_runs()], axis=-1)
        return _nan_mean(stack.tolist())

    def task_labels(self) -> list[str]:
        """Task names if every run saw the tasks in the same order, else positions ``#1, #2...``."""
        runs = self.matrix_runs()
        names = {tuple(run.task_names) for run in runs}
        return list(names.pop()) if len(names) == 1 else [f"#{j + 1}" for j in range(runs[0].n_tasks)]

    def orders_vary(self) -> bool:
        return len({tuple(run.task_names) for run in self.matrix_runs()}) > 1

    def mean_capacity(self) -> dict[str, np.ndarray] | None:
        """Per layer, the fraction in use after each task averaged over runs; None if none recorded."""
        curves = [run.capacity for run in self.runs if run.capacity]
        if not curves:
            return None
        length = min(len(c) for c in curves)
        layers = list(dict.fromkeys(name for c in curves for step in c[:length] for name in step))
        return {layer: _nan_mean([[c[i].get(layer, np.nan) for c in curves] for i in range(length)])
                for layer in layers}


@dataclass
class Table:
    """The rows of one benchmark with one setting."""

    label: str
    benchmark: str
    settings: dict[str, Any]  # only the benchmark settings that vary between tables
    rows: list[Row]
    metrics: list[Metric]

    @property
    def runs(self) -> list[Run]:
        return [run for row in self.rows for run in row.runs]


def aggregate(runs: Sequence[Run]) -> list[Table]:
    """Group ``runs`` into tables (per benchmark setting) of rows (per method setting)."""
    by_benchmark: dict[str, list[Run]] = {}
    for run in runs:
        by_benchmark.setdefault(run.benchmark, []).append(run)
    tables = []
    for benchmark in sorted(by_benchmark):
        group = by_benchmark[benchmark]
        settings = [grouping.benchmark_settings(run) for run in group]
        keys = grouping.varying_keys(settings)
        split = _split(benchmark, group, settings, keys)
        for key in sorted(split, key=lambda k: grouping.sort_key(benchmark, split[k][1], keys)):
            members, setting = split[key]
            shown = {k: setting.get(k) for k in keys}
            tables.append(_table(grouping.label(benchmark, setting, keys), benchmark, shown, members))
    return tables


def _nan_mean(rows: Any) -> np.ndarray:
    """The mean of each row over its non-NaN values (NaN for a row with none)."""
    values = np.array(rows, dtype=float)
    counts = np.sum(~np.isnan(values), axis=-1)
    return np.where(counts > 0, np.nansum(values, axis=-1) / np.maximum(counts, 1), np.nan)


def _split(name: str, runs: list[Run], settings: list[dict[str, Any]], keys: list[str]):
    """Runs with equal values of ``keys``, as {key: (runs, settings of the first)}."""
    groups: dict[tuple, tuple[list[Run], dict[str, Any]]] = {}
    for run, setting in zip(runs, settings, strict=True):
        groups.setdefault(grouping.group_key(name, setting, keys), ([], setting))[0].append(run)
    return groups


def _table(label: str, benchmark: str, settings: dict[str, Any], runs: list[Run]) -> Table:
    metrics = [m for m in METRICS if not m.optional or any(m.read(run) is not None for run in runs)]
    rows: list[Row] = []
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    for method in sorted(by_method):
        group = by_method[method]
        row_settings = [grouping.row_settings(run) for run in group]
        model_keys = {k for k in grouping.varying_keys(row_settings) if k.startswith("model")}
        # the model is named when several appear in the table, not only within this method
        if len({run.model for run in runs}) > 1:
            model_keys.add("model")
        keys = [k for k in grouping.varying_keys(row_settings) if not k.startswith("model")]
        keys += sorted(model_keys, key=lambda k: (k != "model", k))
        split = _split(method, group, row_settings, keys)
        for key in sorted(split, key=lambda k: grouping.sort_key(method, split[k][1], keys)):
            members, setting = split[key]
            row = Row(grouping.label(method, setting, keys), method, {k: setting.get(k) for k in keys},
                      members)
            row.cells = {m.key: summarize(m.read(run) for run in members) for m in metrics}
            rows.append(row)
    return Table(label, benchmark, settings, rows, metrics)
