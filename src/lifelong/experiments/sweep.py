"""Running a grid of runs on an executor (local process pool or Ray), skipping finished ones.

Every run gets its directory in the store (keyed by its config hash); a run that finished before
is skipped, an interrupted one resumes from its checkpoint. A failing run is reported and retried
once; it never takes the sweep down.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.experiments.run_config import RunConfig
from lifelong.experiments.runner import finished_result, run_in_directory
from lifelong.experiments.store import Store

RETRIES = 1


def execute_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec (``config`` fields and ``run_dir``) in a worker; returns its metrics."""
    config = RunConfig(**spec["config"])
    result = run_in_directory(config, spec["run_dir"], resume=True)
    return {"metrics": result.metrics, "seconds": result.total_seconds}


@dataclass
class SweepSummary:
    total: int
    done: list[RunConfig] = field(default_factory=list)
    cached: list[RunConfig] = field(default_factory=list)
    failed: list[tuple[RunConfig, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


ProgressLine = Callable[[str], None]


def run_sweep(
    runs: list[RunConfig],
    out_dir: str | Path,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    config_file: str | Path | None = None,
    say: ProgressLine | None = None,
) -> SweepSummary:
    """Run every config of ``runs`` into the store at ``out_dir`` and return what happened."""
    from lifelong.experiments.executors import JobFailed, make_executor

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    store = Store(out_dir)
    if config_file is not None:
        shutil.copyfile(config_file, store.root / "sweep.yaml")
    summary = SweepSummary(total=len(runs))
    unique = {config.key(): config for config in runs}
    pending = []
    for config in unique.values():
        run_dir = store.run_dir(config)
        done = finished_result(run_dir)
        if done is not None:
            summary.cached.append(config)
            store.record(config, "done", done.metrics)
        else:
            store.record(config, "pending")
            pending.append(config)
    say(f"sweep: {len(unique)} runs, {len(summary.cached)} already done, {len(pending)} to run "
        f"on {executor}")
    errors: dict[str, str] = {}
    for attempt in range(1 + RETRIES):
        if not pending:
            break
        if attempt:
            say(f"retrying {len(pending)} failed run(s) once")
        specs = [{"config": dataclasses.asdict(c), "run_dir": str(store.run_dir(c))} for c in pending]
        failed_now = []
        with make_executor(executor, workers=workers or os.cpu_count() or 1,
                           address=address) as pool:
            for index, outcome in pool.map_unordered(execute_run, specs):
                config = pending[index]
                if isinstance(outcome, JobFailed):
                    errors[config.key()] = outcome.message
                    store.record(config, "failed", error=outcome.traceback or outcome.message,
                                 attempt=True)
                    failed_now.append(config)
                    say(f"  failed: {describe(config)}: {outcome.message}")
                else:
                    store.record(config, "done", outcome["metrics"], attempt=True)
                    summary.done.append(config)
                finished = len(summary.done) + len(summary.cached)
                say(f"runs: {finished} done, {len(failed_now)} failed, "
                    f"{len(unique) - finished - len(failed_now)} remaining")
        pending = failed_now
    summary.failed = [(config, errors[config.key()]) for config in pending]
    return summary


def describe(config: RunConfig) -> str:
    parts = [config.benchmark, config.method, f"seed={config.seed}"]
    if config.order not in (None, 0):
        parts.append(f"order={config.order}")
    parts += [f"{k}={v}" for k, v in sorted(config.method_params.items())]
    return " ".join(parts)
