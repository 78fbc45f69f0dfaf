"""Loading runs for the report: finding result files, skipping unusable ones, counting them.

`write_record` (a hand-made ``result.json`` with exact values) is shared with the other
``test_report_*`` modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifelong.report.runs import ReportInputError, load_run, load_runs


def write_record(directory: Path, *, method: str = "finetune", seed: int = 0, acc: float = 0.5,
                 bwt: float = -0.1, benchmark: str = "split-digits", n_tasks: int = 2,
                 method_params: dict[str, Any] | None = None, benchmark_params: dict | None = None,
                 model: str = "mlp", seconds: float = 2.0, memory: float = 300.0,
                 extra: dict[str, Any] | None = None, **metrics: float) -> Path:
    """Write a complete, hand-made ``result.json`` into ``directory``; returns its path."""
    matrix = [[0.9 if j <= i else 0.5 for j in range(n_tasks)] for i in range(n_tasks)]
    record = {
        "config": {
            "benchmark": benchmark, "method": method, "model": model,
            "benchmark_params": {"seed": seed, "scenario": "task", **(benchmark_params or {})},
            "method_params": {"lr": 0.03, **(method_params or {})},
            "model_params": {"hidden": [100, 100]},
            "tasks": None, "epochs": 1, "batch_size": 10, "seed": seed, "device": "cpu",
        },
        "scenario": "task",
        "task_names": [f"t{j}" for j in range(n_tasks)],
        "accuracy_matrix": matrix,
        "untrained_accuracy": [0.5] * n_tasks,
        "metrics": {"acc": acc, "bwt": bwt, "fwt": 0.0, "forgetting": -bwt, **metrics},
        "seconds": {"train": [1.0] * n_tasks, "eval": [0.1] * n_tasks, "untrained_eval": 0.1,
                    "total": seconds},
        "peak_memory_mb": memory,
        **(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_text(json.dumps(record))
    return directory / "result.json"


def test_finds_result_files_at_any_depth_once(tmp_path):
    write_record(tmp_path / "sweep" / "runs" / "a1")
    write_record(tmp_path / "sweep" / "runs" / "b2" / "deeper")
    write_record(tmp_path / "single")
    loaded = load_runs([tmp_path / "sweep", tmp_path, tmp_path / "single" / "result.json"])
    assert len(loaded.runs) == 3 and loaded.skipped == []


def test_unreadable_incomplete_and_partial_results_are_skipped_counted_and_warned(tmp_path, capsys):
    write_record(tmp_path / "good")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "result.json").write_text('{"config": {"benchm')
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "result.json").write_text('{"accuracy_matrix": [[1.0]]}')
    partial = write_record(tmp_path / "partial", n_tasks=3)
    record = json.loads(partial.read_text())
    record["accuracy_matrix"][2] = [None, None, None]
    partial.write_text(json.dumps(record))
    flagged = write_record(tmp_path / "flagged", extra={"complete": False})

    loaded = load_runs([tmp_path])

    assert [run.path.parent.name for run in loaded.runs] == ["good"]
    kinds = {entry.path.parent.name: entry.kind for entry in loaded.skipped}
    assert kinds == {"corrupt": "unreadable", "noconfig": "invalid", "partial": "partial",
                     "flagged": "partial"}
    stderr = capsys.readouterr().err
    assert stderr.count("lifelong: warning: skipped") == 4
    assert "partial run (2 of 3 tasks finished)" in stderr
    assert str(flagged) in stderr


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ReportInputError, match="does not exist"):
        load_runs([tmp_path / "nowhere"])


def test_run_exposes_matrix_metrics_time_memory_and_capacity(tmp_path):
    path = write_record(tmp_path, n_tasks=2, seconds=3.5, memory=123.0,
                        extra={"capacity": [{"fc1": 0.25}, {"fc1": 0.5}]})
    run = load_run(path)
    assert run.accuracy_matrix.tolist() == [[0.9, 0.5], [0.9, 0.9]]
    assert (run.total_seconds, run.peak_memory_mb) == (3.5, 123.0)
    assert run.capacity == [{"fc1": 0.25}, {"fc1": 0.5}]
    assert run.task_names == ["t0", "t1"]
