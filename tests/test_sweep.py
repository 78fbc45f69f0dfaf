"""Sweeps end to end: local pool vs embedded Ray, skipping finished runs, failures retried once."""

import json

import pytest
import yaml

from lifelong.cli import main
from lifelong.experiments.config import expand
from lifelong.experiments.store import Store
from lifelong.experiments.sweep import run_sweep

GRID = """
benchmark: split-digits
benchmark_params: {train_per_task: 80}
methods: [finetune, independent]
seeds: [0, 1]
"""


def matrices(out):
    return {r.key: json.loads((out / r.run_dir / "result.json").read_text())["accuracy_matrix"]
            for r in Store(out).runs()}


def test_local_and_ray_sweeps_give_identical_results(tmp_path):
    runs = expand(yaml.safe_load(GRID))
    local = run_sweep(runs, tmp_path / "local", executor="local", workers=2, say=lambda _: None)
    ray = run_sweep(runs, tmp_path / "ray", executor="ray", workers=2, say=lambda _: None)
    assert local.ok and ray.ok and len(local.done) == len(ray.done) == 4
    a, b = matrices(tmp_path / "local"), matrices(tmp_path / "ray")
    assert len(a) == 4 and a == b
    assert all(r.status == "done" and r.attempts == 1 for r in Store(tmp_path / "ray").runs())


def test_rerunning_a_sweep_skips_finished_runs(tmp_path):
    runs = expand(yaml.safe_load(GRID))
    lines = []
    run_sweep(runs, tmp_path, workers=2, say=lines.append)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/result.json")}
    again = run_sweep(runs, tmp_path, workers=2, say=lines.append)
    assert len(again.cached) == 4 and not again.done
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/result.json")} == stamps
    assert "sweep: 4 runs, 4 already done, 0 to run on local" in lines
    assert "runs: 4 done, 0 failed, 0 remaining" in lines


def test_a_failing_run_is_retried_once_and_does_not_stop_the_sweep(tmp_path):
    config = GRID + "device: [cpu, 'cuda:99']\n"  # no machine has a 100th GPU
    runs = expand(yaml.safe_load(config))
    lines = []
    summary = run_sweep(runs, tmp_path, workers=2, say=lines.append)
    assert len(summary.done) == 4 and len(summary.failed) == 4
    assert all(c.device == "cuda:99" for c, _ in summary.failed)
    failed = Store(tmp_path).runs(status="failed")
    assert len(failed) == 4 and all(r.attempts == 2 for r in failed)
    assert "retrying 4 failed run(s) once" in lines
    assert any("failed: split-digits" in line for line in lines)


def test_cli_sweep_dry_run_and_exit_codes(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("benchmark: split-digits\nmethods: [finetune, independent]\nseeds: [0, 1]\n")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs; nothing was run" in out and "split-digits independent seed=1" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: split-digits\nmethods: [nope]\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert "methods[0]='nope' is unknown" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert main(["sweep", str(path), "--address", "127.0.0.1:1"]) == 2


@pytest.mark.parametrize("argv", [["runs", "/nonexistent-store"]])
def test_runs_on_a_missing_store(argv, capsys):
    assert main(argv) == 2
    assert "is not a store" in capsys.readouterr().err


KILL_GRID = """
benchmark: permuted-mnist
benchmark_params: {n_tasks: 6, train_per_task: 300, test_per_task: 200}
methods: [finetune, joint]
seed: 1
"""


def test_killed_sweep_leaves_no_workers_and_its_rerun_matches_an_uninterrupted_one(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "kill.yaml"
    config.write_text(KILL_GRID)
    command = [sys.executable, "-m", "lifelong.cli", "sweep", str(config), "--workers", "2"]
    subprocess.run(command + ["--out", str(tmp_path / "reference")], check=True, capture_output=True)
    sweep = subprocess.Popen(command + ["--out", str(tmp_path / "killed")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob("killed/runs/*/checkpoints/*.ckpt")):
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True)
    children = [int(pid) for pid in workers.stdout.split()]
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    time.sleep(1.0)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}")
             and "zombie" not in open(f"/proc/{pid}/status").read()]
    assert children and not alive  # the workers died with the sweep
    subprocess.run(command + ["--out", str(tmp_path / "killed")], check=True, capture_output=True)
    assert matrices(tmp_path / "killed") == matrices(tmp_path / "reference")
    assert "resumed after task" in "".join(
        p.read_text() for p in tmp_path.glob("killed/runs/*/log.txt"))
