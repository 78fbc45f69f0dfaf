import json

import pytest
import torch

from lifelong.cli import main
from lifelong.experiments.run_config import RunConfig, build_stream


def test_exported_hat_task_model_scores_the_recorded_pruned_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "split-digits", "--method", "hat", "--tasks", "2", "--epochs", "2",
                 "--out", str(out), "--quiet"]) == 0
    target = tmp_path / "task1.pt"
    assert main(["export", str(out), "--task", "1", "-o", str(target)]) == 0
    assert "task 1 (2-3) of hat" in capsys.readouterr().out
    model = torch.load(target, weights_only=False)
    task = build_stream(RunConfig(benchmark="split-digits", method="hat", tasks=2))[1]
    with torch.no_grad():
        predicted = model(task.x_test).argmax(1) + min(task.classes)
    accuracy = float((predicted == task.y_test).float().mean())
    recorded = json.loads((out / "result.json").read_text())["method_reports"][-1]["compression"][1]
    assert accuracy == pytest.approx(recorded["pruned_accuracy"])
    assert recorded["weights_kept"] < 1.0


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--task", "0", "-o", str(tmp_path / "m.pt")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "split-digits", "--method", "finetune", "--tasks", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert main(["export", str(out), "--task", "0", "-o", str(tmp_path / "m.pt")]) == 2
    assert "finetune does not export per-task models" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
