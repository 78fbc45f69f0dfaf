"""SRC's class-incremental protocol: how much of what fine-tuning forgets a sleep phase gives back.

Tadros et al. (Nature Communications 2022, "Sleep-like unsupervised replay reduces catastrophic
forgetting in artificial neural networks") train a 784-1200-1200-10 ReLU network on split MNIST and
split Fashion-MNIST (5 tasks of 2 classes, class-incremental: one 10-way output, no task id) and
compare fine-tuning ("baseline"), fine-tuning with a sleep phase after every task (SRC,
`lifelong.methods.sleep_replay`) and training on everything at once. For each benchmark and seed
the table gives, after the last task:

- ACC: the mean over tasks of the 10-way test accuracy (the paper: accuracy on the whole test set);
- old: the mean accuracy on the four earlier tasks;
- forgotten (finetune): the mean over the earlier tasks of ``R[t, t] - R[T-1, t]``, what plain SGD
  lost of what it had learnt;
- recovered: ``(old(sleep-replay) - old(finetune)) / forgotten(finetune)`` on the same seed, the
  share of the forgotten accuracy sleep gives back; and ``(ACC(sleep) - ACC(finetune)) /
  (ACC(joint) - ACC(finetune))``, the share of the gap to joint training it closes.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.experiments.run_config import RunConfig
from lifelong.experiments.store import Store
from lifelong.methods import METHODS
from lifelong.reproduce_ratio import RatioMethod


@dataclass(frozen=True)
class SleepBenchmark:
    benchmark: str
    params: dict[str, Any]
    #: per-benchmark parameters of some methods (label -> params): the code's tuned sleep settings
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SleepProtocol:
    name: str
    paper: str
    protocol: str
    benchmarks: tuple[SleepBenchmark, ...]
    methods: tuple[RatioMethod, ...]
    baseline: str = "finetune"
    sleeper: str = "sleep-replay"
    reference: str = "joint"
    model: str = "mlp"
    model_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    notes: str = ""

    def available(self) -> list[RatioMethod]:
        return [m for m in self.methods if m.method in METHODS]

    def missing_methods(self) -> list[str]:
        return [m.name for m in self.methods if m.method not in METHODS]

    def config(self, bench: SleepBenchmark, method: RatioMethod, seed: int) -> RunConfig:
        return RunConfig(benchmark=bench.benchmark, method=method.method, model=self.model,
                         benchmark_params=bench.params,
                         method_params={**method.params, **bench.method_params.get(method.name, {})},
                         model_params=self.model_params, epochs=self.epochs,
                         batch_size=self.batch_size, seed=seed)

    def runs(self, seeds: Sequence[int]) -> list[RunConfig]:
        return [self.config(bench, method, seed) for bench in self.benchmarks
                for method in self.available() for seed in seeds]

    def matrices(self, store_dir: Path, seeds: Sequence[int]) -> dict[str, dict[str, dict[int, np.ndarray]]]:
        """benchmark -> method label -> seed -> accuracy matrix, for the finished runs."""
        out: dict[str, dict[str, dict[int, np.ndarray]]] = {}
        for bench in self.benchmarks:
            per_method = out.setdefault(bench.benchmark, {})
            for method in self.available():
                for seed in seeds:
                    R = _matrix(store_dir, self.config(bench, method, seed))
                    if R is not None and not np.isnan(R).any():
                        per_method.setdefault(method.name, {})[seed] = R
        return out

    def table(self, store_dir: Path, seeds: Sequence[int]) -> str:
        return sleep_table(self, self.matrices(store_dir, seeds))


def _matrix(store_dir: Path, config: RunConfig) -> np.ndarray | None:
    path = Store(store_dir).run_dir(config) / "result.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return np.array([[np.nan if v is None else v for v in row] for row in record["accuracy_matrix"]])


def final_accuracy(R: np.ndarray) -> float:
    return float(R[-1].mean())


def old_accuracy(R: np.ndarray) -> float:
    """Mean accuracy on every task but the last, after the last."""
    return float(R[-1, :-1].mean())


def forgotten(R: np.ndarray) -> float:
    """Mean over the earlier tasks of what was lost since the task was learnt: ``R[t,t] - R[T-1,t]``."""
    T = len(R)
    return float(np.mean([R[t, t] - R[T - 1, t] for t in range(T - 1)]))


def recovered_share(sleep: np.ndarray, baseline: np.ndarray) -> float:
    """Share of the baseline's forgotten accuracy on the earlier tasks that sleep gives back."""
    lost = forgotten(baseline)
    return float("nan") if lost <= 0 else (old_accuracy(sleep) - old_accuracy(baseline)) / lost


def gap_closed(sleep: np.ndarray, baseline: np.ndarray, reference: np.ndarray) -> float:
    """Share of the final-accuracy gap between the baseline and the reference that sleep closes."""
    gap = final_accuracy(reference) - final_accuracy(baseline)
    return float("nan") if gap <= 0 else (final_accuracy(sleep) - final_accuracy(baseline)) / gap


def _mean_std(values: Sequence[float], percent: bool = True) -> str:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "-"
    scale = 100.0 if percent else 1.0
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * statistics.mean(values):.1f} ± {scale * statistics.stdev(values):.1f}"


def sleep_table(protocol: SleepProtocol, matrices: dict[str, dict[str, dict[int, np.ndarray]]]) -> str:
    """Per benchmark: ACC, old-task accuracy and forgetting per method (in %, mean ± std over seeds),
    the share of forgotten accuracy sleep recovers (paired by seed), and the goal's verdict."""
    blocks = []
    for bench in protocol.benchmarks:
        per_method = matrices.get(bench.benchmark, {})
        params = ", ".join(f"{k}={v}" for k, v in bench.params.items())
        lines = [f"**{bench.benchmark}** ({params})", "",
                 "| method | seeds | ACC % | old tasks % | learning accuracy % | forgotten % |",
                 "|---|---|---|---|---|---|"]
        for method in protocol.methods:
            runs = per_method.get(method.name)
            if not runs:
                status = "not in the library yet" if method.method not in METHODS else "no finished run"
                lines.append(f"| {method.name} | - | ({status}) | | | |")
                continue
            Rs = list(runs.values())
            lines.append(f"| {method.name} | {len(Rs)} | {_mean_std([final_accuracy(R) for R in Rs])} | "
                         f"{_mean_std([old_accuracy(R) for R in Rs])} | "
                         f"{_mean_std([float(np.mean(np.diag(R))) for R in Rs])} | "
                         f"{_mean_std([forgotten(R) for R in Rs])} |")
        sleep, base = per_method.get(protocol.sleeper, {}), per_method.get(protocol.baseline, {})
        ref = per_method.get(protocol.reference, {})
        paired = sorted(set(sleep) & set(base))
        lines.append("")
        if paired:
            recovered = [recovered_share(sleep[s], base[s]) for s in paired]
            closed = [gap_closed(sleep[s], base[s], ref[s]) for s in paired if s in ref]
            lines.append(f"Sleep recovers {_mean_std(recovered)}% of the accuracy {protocol.baseline} "
                         f"forgot on the earlier tasks and closes {_mean_std(closed)}% of the gap "
                         f"to {protocol.reference} ({len(paired)} paired seeds).")
            ok = statistics.mean(final_accuracy(sleep[s]) for s in paired) > statistics.mean(
                final_accuracy(base[s]) for s in paired)
            verdict = "PASS" if ok else "FAIL"
        else:
            verdict = "NOT RUN"
        lines.append(f"- Goal: {bench.benchmark}: {protocol.sleeper} ACC above {protocol.baseline}: "
                     f"**{verdict}**")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


#: the code's Fashion-MNIST sleep settings (FashionMNIST/run_class_task_summary.m)
FASHION_SLEEP = {"input_rate": 181.047258, "inc": 0.041001, "dec": 0.003344,
                 "beta": (40.446884, 27.596929, 33.109393), "alpha_scale": 31.592987}
SPLIT = {"scenario": "class", "train_per_task": 5000}

SLEEP_PROTOCOL = SleepProtocol(
    name="sleep-replay-split",
    paper="Tadros, Krishnan, Ramyaa & Bazhenov, Sleep-like unsupervised replay reduces "
          "catastrophic forgetting in artificial neural networks, Nature Communications 2022",
    protocol=(
        "SRC paper's class-incremental protocol (official code tmtadros/SleepReplayConsolidation, "
        "MNIST/ and FashionMNIST/run_class_task_summary.m): split MNIST and split Fashion-MNIST, 5 "
        "tasks of 2 classes (0-1, 2-3, ...), one 10-unit output scored without a task id, the "
        "first 5000 training images of each task (here 5000 drawn per task) and the whole test set "
        "of its classes; MLP 784-1200-1200-10 with ReLU and dropout 0.25, SGD lr 0.1, 2 epochs of "
        "minibatches of 100 per task, for every method. sleep-replay sleeps after every task with "
        "the code's tuned settings for each dataset (MNIST: its defaults; Fashion-MNIST: "
        "input_rate 181.05, inc 0.041, dec 0.0033, beta 40.4/27.6/33.1, alpha_scale 31.6), for "
        "15000 + 5000 t time steps after task t. joint trains on every task so far (reference). "
        "ACC: mean 10-way accuracy over the tasks after the last; old tasks: the first four."
    ),
    benchmarks=(
        SleepBenchmark("split-mnist", SPLIT),
        SleepBenchmark("split-fashion-mnist", SPLIT, method_params={"sleep-replay": FASHION_SLEEP}),
    ),
    methods=(RatioMethod("finetune", {"lr": 0.1}), RatioMethod("sleep-replay", {"lr": 0.1}),
             RatioMethod("joint", {"lr": 0.1})),
    model_params={"hidden": [1200, 1200], "dropout": 0.25},
    epochs=2,
    batch_size=100,
    seeds=(0, 1, 2),
    notes=(
        "Where ours differs from the paper's code, and why: plain SGD on the cross-entropy of the "
        "classes seen so far (the code: momentum 0.5 and a squared error on ReLU outputs over all "
        "10 units); the library's MLP has biases (zero at initialisation; the paper's network has "
        "none: the spiking network ignores them and sleep leaves them unchanged); Xavier-uniform "
        "initialisation (the code: uniform in [-0.01, 0.01]); the normalisation's maximum "
        "activations come from the current task's training data and the sleep input is the running "
        "mean of the training images seen so far (the code reads every earlier task's training "
        "set for both, which a continual learner does not keep)."
    ),
)
