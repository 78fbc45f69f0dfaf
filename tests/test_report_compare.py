"""Comparison tables: grouping of runs into tables and rows, exact cell values, every format."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from test_report_records import write_record

from lifelong.experiments.run_config import RunConfig, run_experiment
from lifelong.report import ReportInputError, aggregate, compare, load_runs

HALF_WIDTH_3 = 4.302653 * 0.1 / math.sqrt(3)  # values 0.5, 0.6, 0.7: sd 0.1, t(0.975, 2)


@pytest.fixture
def sweep(tmp_path):
    """finetune lr=0.1 (3 seeds), finetune lr=0.01 (1 seed), joint (2 seeds), on two benchmarks."""
    for seed, acc in enumerate([0.5, 0.6, 0.7]):
        write_record(tmp_path / "runs" / f"ft-a{seed}", seed=seed, acc=acc, method_params={"lr": 0.1},
                     acc_task_agnostic=acc / 2)
    write_record(tmp_path / "runs" / "ft-b", acc=0.8, method_params={"lr": 0.01})
    for seed in (0, 1):
        write_record(tmp_path / "runs" / f"joint{seed}", method="joint", seed=seed, acc=0.9, bwt=0.0)
    for n_tasks in (3, 4):
        write_record(tmp_path / "pm" / f"n{n_tasks}", benchmark="permuted-mnist", n_tasks=n_tasks,
                     benchmark_params={"n_tasks": n_tasks, "data_root": f"/data/{n_tasks}"})
    return tmp_path


def test_seeds_fold_into_one_row_and_different_lr_make_two(sweep):
    tables = aggregate(load_runs([sweep]).runs)
    assert [t.label for t in tables] == ["permuted-mnist (n_tasks=3)", "permuted-mnist (n_tasks=4)",
                                         "split-digits"]
    split = tables[2]
    assert [(row.label, row.n) for row in split.rows] == [
        ("finetune (lr=0.01)", 1), ("finetune (lr=0.1)", 3), ("joint", 2)]
    cell = split.rows[1].cells["acc"]
    assert cell.mean == pytest.approx(0.6) and cell.n == 3
    assert cell.half_width == pytest.approx(HALF_WIDTH_3)
    assert split.rows[0].cells["acc"].half_width is None  # one run: no interval
    assert split.rows[1].cells["acc_task_agnostic"].mean == pytest.approx(0.3)
    assert split.rows[2].cells["acc_task_agnostic"].n == 0  # joint did not record it
    assert [m.key for m in tables[0].metrics] == ["acc", "bwt", "fwt", "forgetting", "time_s",
                                                  "peak_memory_mb"]


def test_the_model_is_named_when_several_appear(tmp_path):
    write_record(tmp_path / "a", model="mlp")
    write_record(tmp_path / "b", model="conv")
    write_record(tmp_path / "c", method="joint", model="conv")
    (table,) = aggregate(load_runs([tmp_path]).runs)
    assert [row.label for row in table.rows] == ["finetune (model=conv)", "finetune (model=mlp)",
                                                 "joint (model=conv)"]


def test_text_shows_mean_plus_minus_half_width_and_n(sweep):
    text = compare([sweep], "text")
    block = next(b for b in text.split("\n\n") if b.startswith("split-digits: 6 runs")).splitlines()
    assert block[1].split()[:4] == ["method", "n", "ACC", "BWT"] and "ACC task-agnostic" in block[1]
    assert block[2].split()[:4] == ["finetune", "(lr=0.01)", "1", "0.800"]  # one run: no interval
    assert block[3].split()[:3] == ["finetune", "(lr=0.1)", "3"]
    assert f"0.600 ± {HALF_WIDTH_3:.3f}" in block[3]
    assert len({len(line) for line in block[1:]}) == 1  # aligned columns


def test_markdown_has_a_header_separator_per_table(sweep):
    text = compare([sweep], "markdown")
    lines = text.splitlines()
    separators = [i for i, line in enumerate(lines) if line.startswith("|:---|")]
    assert len(separators) == 3
    assert all(lines[i - 1].startswith("| method | n | ACC |") for i in separators)
    assert "### split-digits (6 runs)" in text


def test_csv_parses_with_mean_ci_and_n_per_metric(sweep):
    rows = list(csv.DictReader(io.StringIO(compare([sweep], "csv"))))
    assert len(rows) == 2 + 3
    row = next(r for r in rows if r["method"] == "finetune (lr=0.1)")
    assert row["benchmark"] == "split-digits" and row["n"] == "3"
    assert float(row["acc_mean"]) == pytest.approx(0.6)
    assert float(row["acc_ci95"]) == pytest.approx(HALF_WIDTH_3)
    assert row["acc_n"] == "3"
    lone = next(r for r in rows if r["method"] == "finetune (lr=0.01)")
    assert lone["acc_ci95"] == "" and lone["acc_task_agnostic_n"] == "0"


def test_json_parses_and_counts_skipped_runs(sweep, capsys):
    (sweep / "broken").mkdir()
    (sweep / "broken" / "result.json").write_text("not json")
    document = json.loads(compare([sweep], "json"))
    assert document["runs"] == 8
    assert [s["kind"] for s in document["skipped"]] == ["unreadable"]
    split = document["tables"][2]
    row = next(r for r in split["rows"] if r["method"] == "finetune (lr=0.1)")
    assert row["settings"] == {"lr": 0.1} and len(row["runs"]) == 3
    assert row["metrics"]["acc"]["ci95"] == pytest.approx(HALF_WIDTH_3)
    assert "skipped" in capsys.readouterr().err
    assert "skipped 1 result file: 1 unreadable" in compare([sweep], "text")


def test_no_usable_run_and_unknown_format_are_clear_errors(tmp_path):
    with pytest.raises(ReportInputError, match="no finished run"):
        compare([tmp_path], "text")
    write_record(tmp_path / "a")
    with pytest.raises(ValueError, match="'html' is not one of text, markdown, csv, json"):
        compare([tmp_path], "html")


def test_real_runs_of_two_seeds_fold_into_one_row_per_method(tmp_path):
    for seed in (0, 1):
        for method in ("finetune", "independent"):
            config = RunConfig(benchmark="split-digits", method=method, seed=seed, tasks=2,
                               benchmark_params={"train_per_task": 20, "test_per_task": 10})
            run_experiment(config, out_dir=tmp_path / f"s{seed}" / method)
    (table,) = aggregate(load_runs([tmp_path]).runs)
    assert table.label == "split-digits"
    assert [(row.label, row.n) for row in table.rows] == [("finetune", 2), ("independent", 2)]
    accs = [json.loads((tmp_path / f"s{s}" / "finetune" / "result.json").read_text())["metrics"]["acc"]
            for s in (0, 1)]
    assert table.rows[0].cells["acc"].mean == pytest.approx(sum(accs) / 2)
    assert table.rows[0].mean_accuracy_matrix().shape == (2, 2)


def test_task_orders_fold_into_one_row_and_matrices_are_averaged_by_position(tmp_path):
    for order, names in ((0, ["t0", "t1"]), (1, ["t1", "t0"])):
        path = write_record(tmp_path / f"order{order}", extra={"task_names": names})
        record = json.loads(path.read_text())
        record["config"]["order"] = [int(name[1]) for name in names]
        record["accuracy_matrix"] = [[0.8, 0.5], [0.6 + 0.2 * order, 1.0]]
        path.write_text(json.dumps(record))
    (table,) = aggregate(load_runs([tmp_path]).runs)
    (row,) = table.rows
    assert row.n == 2 and row.orders_vary()
    assert row.task_labels() == ["#1", "#2"]
    assert row.mean_accuracy_matrix().ravel().tolist() == pytest.approx([0.8, 0.5, 0.7, 1.0])
