import csv
import json
import re
from pathlib import Path

import pytest

from lifelong.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["run", "--benchmark", "nope"], "argument --benchmark: invalid choice: 'nope'"),
    (["run", "--benchmark", "split-digits", "--method", "nope"],
     "method='nope' is unknown; allowed values: adapter,"),
    (["run", "--benchmark", "split-digits", "--method", "finetune", "--param", "nope=1"],
     "--param 'nope' is not a parameter of finetune, split-digits or mlp; allowed:"),
    (["run", "--benchmark", "split-digits", "--method", "finetune", "--param", "lr=fast"],
     "lr='fast' is not a float"),
    (["run", "--benchmark", "split-digits", "--method", "finetune", "--param", "scenario=domain"],
     "scenario='domain' is not allowed; allowed values: task, class"),
    (["run", "--benchmark", "split-digits", "--method", "finetune", "--epochs", "0"],
     "epochs=0 must be at least 1"),
    (["run", "--benchmark", "split-digits", "--method", "finetune", "--tasks", "9"],
     "tasks=9 exceeds the 5 tasks of split-digits"),
    (["run", "--benchmark", "split-digits", "--method", "finetune", "--param", "lr"],
     "must look like name=value"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "x"))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_run_writes_result_json_and_csv(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "run", "--benchmark", "split-digits", "--method",
                                "finetune", "--epochs", "2", "--lr", "0.1", "--param",
                                "hidden=32", "--out", str(out), "--seed", "3")
    assert code == 0, err
    record = json.loads((out / "result.json").read_text())
    config = record["config"]
    assert config["method"] == "finetune" and config["method_params"] == {"lr": 0.1, "optimizer": "sgd"}
    assert config["model_params"]["hidden"] == [32]
    assert config["benchmark_params"]["seed"] == 3 and config["seed"] == 3
    R = record["accuracy_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert all(0.0 <= v <= 1.0 for row in R for v in row)
    assert len(record["untrained_accuracy"]) == 5
    assert set(record["metrics"]) >= {"acc", "bwt", "fwt", "forgetting", "acc_task_agnostic"}
    assert record["metrics"]["acc"] == pytest.approx(sum(R[-1]) / 5)
    assert len(record["accuracy_matrix_task_agnostic"]) == 5
    assert record["peak_memory_mb"] > 0 and len(record["seconds"]["train"]) == 5
    assert record["method_memory"][-1]["parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    rows = list(csv.reader((out / "accuracy_matrix.csv").open()))
    assert rows[0] == ["after_task", "0-1", "2-3", "4-5", "6-7", "8-9"]
    assert [float(v) for v in rows[-1][1:]] == pytest.approx(R[-1], abs=1e-6)
    assert "finetune" in stdout and "ACC" in stdout
    # one line per task on a non-terminal
    assert len([line for line in err.splitlines() if "task " in line]) == 5


def test_same_command_same_matrix(capsys, tmp_path):
    for name in ("a", "b"):
        assert run_cli(capsys, "run", "--benchmark", "split-digits", "--method", "joint",
                       "--out", str(tmp_path / name), "--quiet")[0] == 0
    a, b = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("a", "b"))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


def test_several_methods_get_one_directory_each(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", "--benchmark", "split-digits", "--method",
                           "finetune,restart", "--tasks", "2", "--out", str(tmp_path), "--quiet")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune", "restart"]
    assert len(json.loads((tmp_path / "restart" / "result.json").read_text())["task_names"]) == 2


def test_list_shows_parameters_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "permuted-mnist" in out and "train_per_task=1000" in out
    assert "independent" in out and "init_from_previous=False" in out
    assert "hidden=(100, 100)" in out


def test_readme_python_example_runs_as_written(capsys):
    text = README.read_text()
    block = re.search(r"## From Python\n\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README", "exec"), namespace)
    result = namespace["result"]
    assert result.accuracy_matrix.shape == (5, 5)
    assert 0.5 < result.metrics["acc"] <= 1.0
    assert "acc" in capsys.readouterr().out
