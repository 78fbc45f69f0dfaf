"""Run directories: checkpoints after every task, resume after SIGKILL, corrupt checkpoints."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.experiments import RunDirectoryConflict, run_in_directory
from lifelong.experiments.checkpoint import CorruptCheckpoint, read_checkpoint
from lifelong.experiments.run_config import RunConfig

SMALL = {"train_per_task": 60}


def config(method="finetune", **kw):
    return RunConfig(benchmark="split-digits", method=method, benchmark_params=SMALL, epochs=2,
                     seed=4, **kw)


class Interrupt(Exception):
    pass


def interrupt_after(task_number):
    def progress(event, info):
        if event == "task_end" and info["task"] + 1 == task_number:
            raise Interrupt

    return progress


def test_finished_run_is_not_run_again(tmp_path):
    first = run_in_directory(config(), tmp_path)
    stamp = (tmp_path / "result.json").stat().st_mtime_ns
    again = run_in_directory(config(), tmp_path)
    assert (tmp_path / "result.json").stat().st_mtime_ns == stamp
    assert (again.accuracy_matrix == first.accuracy_matrix).all()
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["complete"] and record["key"] == config().key()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "task-0003.ckpt", "task-0004.ckpt"]


@pytest.mark.parametrize("method", ["finetune", "joint", "independent"])
def test_interrupted_run_resumes_to_the_same_matrix(tmp_path, method):
    reference = run_in_directory(config(method), tmp_path / "reference")
    with pytest.raises(Interrupt):
        run_in_directory(config(method), tmp_path / "run", progress=interrupt_after(3))
    assert not (tmp_path / "run" / "result.json").exists()
    resumed = run_in_directory(config(method), tmp_path / "run")
    assert resumed.accuracy_matrix.tolist() == reference.accuracy_matrix.tolist()
    assert resumed.train_loss == reference.train_loss
    assert "resumed after task 2" in (tmp_path / "run" / "log.txt").read_text()


def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    reference = run_in_directory(config(), tmp_path / "reference")
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        run_in_directory(config(), run_dir, progress=interrupt_after(4))
    newest = run_dir / "checkpoints" / "task-0002.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        read_checkpoint(newest)
    resumed = run_in_directory(config(), run_dir)
    log = (run_dir / "log.txt").read_text()
    assert "bad checkpoint skipped" in log and "task-0002.ckpt" in log
    assert "resumed after task 2 from task-0001.ckpt" in log
    assert resumed.accuracy_matrix.tolist() == reference.accuracy_matrix.tolist()


def test_temp_files_of_killed_writes_are_cleaned_up(tmp_path):
    with pytest.raises(Interrupt):
        run_in_directory(config(), tmp_path, progress=interrupt_after(2))
    stale = tmp_path / "checkpoints" / ".task-0001.ckpt.x1y2.part"
    stale.write_bytes(b"half a checkpoint")
    run_in_directory(config(), tmp_path)
    assert not stale.exists()


def test_flipped_byte_is_detected(tmp_path):
    run_in_directory(config(), tmp_path)
    path = tmp_path / "checkpoints" / "task-0004.ckpt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        read_checkpoint(path)


def test_directory_of_another_config_is_refused(tmp_path):
    run_in_directory(config(), tmp_path)
    with pytest.raises(RunDirectoryConflict, match="another config"):
        run_in_directory(RunConfig(
            benchmark="split-digits", method="joint", benchmark_params=SMALL), tmp_path)


def test_without_resume_the_run_starts_over(tmp_path):
    with pytest.raises(Interrupt):
        run_in_directory(config(), tmp_path, progress=interrupt_after(2))
    result = run_in_directory(config(), tmp_path, resume=False)
    assert "resumed" not in (tmp_path / "log.txt").read_text()
    assert result.tasks_done == 5


# ----------------------------------------------------------------------------- SIGKILL, for real
CLI = [sys.executable, "-m", "lifelong.cli", "run", "--benchmark", "permuted-mnist", "--method",
       "joint", "--tasks", "8", "--param", "train_per_task=300", "--param", "test_per_task=200",
       "--seed", "2", "--quiet"]


def newest_checkpoint(run_dir: Path) -> str | None:
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("task-*.ckpt"))
    return names[-1] if names else None


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    # one thread per process: the runs stay fast even when other work shares the two cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(CLI + ["--out", str(tmp_path / "reference")], check=True, capture_output=True,
                   env=env)
    run_dir = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    while kills < 4 and not (run_dir / "result.json").exists():
        before = newest_checkpoint(run_dir) if run_dir.exists() else None
        process = subprocess.Popen(CLI + ["--out", str(run_dir), "--resume"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if run_dir.exists() and newest_checkpoint(run_dir) != before:
                break  # a new task finished: kill somewhere in the next one (or mid-checkpoint)
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    subprocess.run(CLI + ["--out", str(run_dir), "--resume"], check=True, capture_output=True,
                   env=env)
    assert kills >= 2
    reference = json.loads((tmp_path / "reference" / "result.json").read_text())
    resumed = json.loads((run_dir / "result.json").read_text())
    assert resumed["accuracy_matrix"] == reference["accuracy_matrix"]
    assert resumed["train_loss"] == reference["train_loss"]
    assert "resumed after task" in (run_dir / "log.txt").read_text()
    assert not list(run_dir.glob("**/*.part"))  # no half-written file left behind
