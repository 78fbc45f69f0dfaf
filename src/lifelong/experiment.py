"""One experiment from a plain config: build the stream, model and method, run, write results.

`RunConfig` is what the CLI (and later config files and sweeps) fill in; `resolved()` expands it
into the full config with every default written out, which is what ``result.json`` records.
"""

from __future__ import annotations

import csv
import io
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import lifelong
from lifelong import engine
from lifelong.benchmarks import BENCHMARKS, Stream
from lifelong.io import atomic_write_json, atomic_write_text
from lifelong.methods import METHODS, Method
from lifelong.models import MODELS
from lifelong.params import ParamError


@dataclass
class RunConfig:
    """Everything that defines one run. ``tasks`` keeps only the first N tasks of the stream."""

    benchmark: str = "permuted-mnist"
    method: str = "finetune"
    model: str = "mlp"
    benchmark_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, Any] = field(default_factory=dict)
    tasks: int | None = None
    epochs: int = 1
    batch_size: int = 10
    seed: int = 0
    device: str = "cpu"

    def resolved(self) -> dict[str, Any]:
        """The full config with defaults filled in and values checked (raises `ParamError`)."""
        if self.epochs < 1:
            raise ParamError(f"epochs={self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ParamError(f"batch_size={self.batch_size} must be at least 1")
        if self.tasks is not None and self.tasks < 1:
            raise ParamError(f"tasks={self.tasks} must be at least 1")
        bench_params = dict(self.benchmark_params)
        names = {p.name for p in BENCHMARKS.params(self.benchmark)}
        bench_params.setdefault("seed", self.seed)
        if self.tasks is not None and "n_tasks" in names:
            bench_params.setdefault("n_tasks", self.tasks)
        out = asdict(self)
        out["benchmark_params"] = BENCHMARKS.resolve(self.benchmark, bench_params)
        out["method_params"] = METHODS.resolve(self.method, self.method_params)
        out["model_params"] = MODELS.resolve(self.model, self.model_params)
        return out


def build_stream(config: RunConfig) -> Stream:
    full = config.resolved()
    stream = BENCHMARKS.get(config.benchmark)(**full["benchmark_params"])
    if config.tasks is not None:
        if config.tasks > stream.n_tasks:
            raise ParamError(
                f"tasks={config.tasks} exceeds the {stream.n_tasks} tasks of {config.benchmark}"
            )
        stream = stream.first(config.tasks)
    return stream


def build_method(config: RunConfig, stream: Stream) -> Method:
    full = config.resolved()
    model = MODELS.get(config.model)(
        stream.input_shape, stream.n_units, seed=config.seed, **full["model_params"]
    )
    return METHODS.get(config.method)(model, seed=config.seed, **full["method_params"])


def run_experiment(
    config: RunConfig,
    stream: Stream | None = None,
    out_dir: str | Path | None = None,
    progress: engine.ProgressCallback | None = None,
) -> engine.Result:
    """Run ``config`` (on ``stream`` if already built) and write its results to ``out_dir``."""
    stream = stream if stream is not None else build_stream(config)
    method = build_method(config, stream)
    result = engine.run(method, stream, epochs=config.epochs, batch_size=config.batch_size,
                        seed=config.seed, device=config.device, progress=progress)
    if out_dir is not None:
        write_result(out_dir, config, result)
    return result


def result_record(config: RunConfig, result: engine.Result) -> dict[str, Any]:
    """The content of ``result.json``: the full config, the measurements and the environment."""
    return {
        "config": config.resolved(),
        **result.to_dict(),
        "environment": {
            "lifelong": lifelong.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }


def write_result(out_dir: str | Path, config: RunConfig, result: engine.Result) -> Path:
    """Write ``result.json`` and ``accuracy_matrix.csv`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "result.json", result_record(config, result))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["after_task"] + result.task_names)
    for name, row in zip(result.task_names, result.accuracy_matrix, strict=False):
        writer.writerow([name] + [f"{v:.6f}" for v in row])
    atomic_write_text(out_dir / "accuracy_matrix.csv", buffer.getvalue())
    return out_dir
