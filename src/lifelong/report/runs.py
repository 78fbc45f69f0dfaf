"""Finding and loading finished runs: every ``result.json`` below the directories given.

A directory may be one run's directory or any ancestor of many (a sweep). Result files that cannot
be read, lack ``config`` or ``accuracy_matrix``, or belong to partial runs (``"complete": false``,
or a missing entry in the last row of the accuracy matrix) are skipped with a warning and counted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULT_FILE = "result.json"


class ReportInputError(ValueError):
    """The directories given hold no usable run, or do not exist."""


@dataclass(frozen=True)
class Run:
    """One finished run: where its ``result.json`` is and what it holds."""

    path: Path
    record: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.record["config"]

    @property
    def benchmark(self) -> str:
        return str(self.config.get("benchmark", "?"))

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def task_names(self) -> list[str]:
        names = self.record.get("task_names")
        if isinstance(names, list) and len(names) == self.n_tasks:
            return [str(n) for n in names]
        return [str(j + 1) for j in range(self.n_tasks)]

    @property
    def n_tasks(self) -> int:
        return len(self.record["accuracy_matrix"])

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """R[i, j]: accuracy on task j after training task i (NaN where not recorded)."""
        return _matrix(self.record["accuracy_matrix"])

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self.record.get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    @property
    def total_seconds(self) -> float | None:
        seconds = self.record.get("seconds")
        return as_number(seconds.get("total")) if isinstance(seconds, dict) else None

    @property
    def peak_memory_mb(self) -> float | None:
        return as_number(self.record.get("peak_memory_mb"))

    @property
    def capacity(self) -> list[dict[str, float]] | None:
        """HAT-style capacity: per task, {layer name: fraction of the layer in use}; None if absent."""
        capacity = self.record.get("capacity")
        if not isinstance(capacity, list) or not all(isinstance(c, dict) for c in capacity):
            return None
        return [{str(k): float(v) for k, v in c.items() if as_number(v) is not None} for c in capacity]


@dataclass(frozen=True)
class SkippedRun:
    """A result file that was not used: ``kind`` is one of `SKIP_KINDS`, ``reason`` says more."""

    path: Path
    kind: str
    reason: str


#: Why a result file is skipped: it cannot be parsed, it lacks a field, or its run is unfinished.
SKIP_KINDS = ("unreadable", "invalid", "partial")


class UnusableResultError(ValueError):
    """A result file that cannot be used; ``kind`` is one of `SKIP_KINDS`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass
class LoadedRuns:
    """The runs that could be used, and the result files skipped with the reason for each."""

    runs: list[Run] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)


def find_result_files(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``result.json`` at or below each directory (a file given directly is kept), once each."""
    found: dict[Path, None] = {}
    for entry in dirs:
        entry = Path(entry)
        if entry.is_file():
            found.setdefault(entry.resolve())
        elif entry.is_dir():
            for path in sorted(entry.rglob(RESULT_FILE)):
                if path.is_file():
                    found.setdefault(path.resolve())
        else:
            raise ReportInputError(f"{entry} does not exist; give run directories or directories "
                                   f"above them (each run holds a {RESULT_FILE})")
    return list(found)


def load_run(path: Path) -> Run:
    """Read and check one result file; raises `UnusableResultError` saying why it cannot be used."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnusableResultError("unreadable", f"unreadable ({type(error).__name__}: {error})") from error
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UnusableResultError("invalid", "no 'config'")
    matrix = record.get("accuracy_matrix")
    if not isinstance(matrix, list) or not matrix or not all(isinstance(r, list) for r in matrix):
        raise UnusableResultError("invalid", "no 'accuracy_matrix'")
    if any(len(row) != len(matrix) for row in matrix):
        raise UnusableResultError("invalid", "'accuracy_matrix' is not square")
    if record.get("complete") is False or any(as_number(v) is None for v in matrix[-1]):
        done = sum(1 for row in matrix if row and all(as_number(v) is not None for v in row))
        raise UnusableResultError("partial", f"partial run ({done} of {len(matrix)} tasks finished)")
    return Run(Path(path), record)


def load_runs(dirs: Iterable[str | Path], warn: Callable[[str], None] | None = None) -> LoadedRuns:
    """Load every usable run below ``dirs``; each skipped file is reported through ``warn``.

    ``warn`` defaults to printing ``lifelong: warning: ...`` on stderr.
    """
    warn = warn or _warn_on_stderr
    loaded = LoadedRuns()
    for path in find_result_files(dirs):
        try:
            loaded.runs.append(load_run(path))
        except UnusableResultError as error:
            loaded.skipped.append(SkippedRun(path, error.kind, str(error)))
            warn(f"skipped {path}: {error}")
    return loaded


def _warn_on_stderr(message: str) -> None:
    print(f"lifelong: warning: {message}", file=sys.stderr)


def as_number(value: Any) -> float | None:
    """``value`` as a float, or None for null, NaN, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if np.isnan(value) else value


def _matrix(rows: list[list[Any]]) -> np.ndarray:
    return np.array([[np.nan if as_number(v) is None else float(v) for v in row] for row in rows])
