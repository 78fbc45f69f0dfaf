"""Optional loggers: what the CLI logs to TensorBoard and MLflow reads back exactly."""

import json

import pytest

from lifelong.cli import main


def run_with_log(tmp_path, *targets):
    out = tmp_path / "run"
    argv = ["run", "--benchmark", "split-digits", "--method", "finetune", "--tasks", "3",
            "--out", str(out), "--quiet"]
    for target in targets:
        argv += ["--log", target]
    assert main(argv) == 0
    return json.loads((out / "result.json").read_text())


def test_tensorboard_scalars_round_trip(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    record = run_with_log(tmp_path, f"tensorboard:{tmp_path / 'tb'}")
    (run_dir,) = (tmp_path / "tb").iterdir()
    events = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    R = record["accuracy_matrix"]
    first = events.Scalars("accuracy/0")
    assert [e.step for e in first] == [1, 2, 3]
    assert [e.value for e in first] == pytest.approx([row[0] for row in R], abs=1e-6)
    mean_seen = [e.value for e in events.Scalars("accuracy/mean_seen")]
    assert mean_seen[-1] == pytest.approx(record["metrics"]["acc"], abs=1e-6)
    assert [e.value for e in events.Scalars("loss/train")] == pytest.approx(record["train_loss"])


def test_mlflow_run_with_sqlite_backend(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = run_with_log(tmp_path, f"mlflow:{uri}")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lifelong").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "finetune"
    assert run.data.params["method_params.lr"] == "0.03"
    history = client.get_metric_history(run.info.run_id, "accuracy_mean_seen")
    assert [m.step for m in history] == [1, 2, 3]
    assert history[-1].value == pytest.approx(record["metrics"]["acc"], abs=1e-9)
    assert not (tmp_path / "mlruns").exists()


def test_bad_log_target_is_a_one_line_error(tmp_path, capsys):
    code = main(["run", "--benchmark", "split-digits", "--method", "finetune", "--log", "wandb:x",
                 "--out", str(tmp_path / "never")])
    assert code == 2 and "must be tensorboard:DIR or mlflow:URI" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
