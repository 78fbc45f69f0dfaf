"""Named paper protocols, run over several seeds and set beside the paper's numbers.

    lifelong reproduce --list
    lifelong reproduce gem-permuted-mnist [--seeds 0,1,2] [--workers 2] [--record]

A `Protocol` is a set of run configs (one per method and seed, through the sweep machinery: runs
are parallel, resumable and skipped when already done), the numbers the paper reports, and the
goals a reproduction must meet. ``--record`` writes the protocol's section of ``REPRODUCTIONS.md``.
"""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.experiments.run_config import RunConfig
from lifelong.experiments.store import Store
from lifelong.methods import METHODS
from lifelong.params import ParamError
from lifelong.reproduce_mirzadeh import mirzadeh_protocols
from lifelong.reproduce_orders import OrdersBenchmark, OrdersProtocol
from lifelong.reproduce_ratio import RatioBenchmark, RatioMethod, RatioProtocol
from lifelong.reproduce_remind import REMIND_BUDGET, BudgetProtocol
from lifelong.reproduce_sleep import SLEEP_PROTOCOL, SleepProtocol
from lifelong.reproduce_text import CTR_PROTOCOLS, TextProtocol


@dataclass(frozen=True)
class MethodSetting:
    """One method of a protocol: its name, its parameters and its model's."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    #: this method's minibatch when its paper ran it at another than the protocol's (None: the protocol's)
    batch_size: int | None = None


@dataclass(frozen=True)
class Goal:
    """A check of the reproduction: ``method``'s ``metric`` near ``target``, or above others."""

    text: str
    check: Callable[[dict[str, dict[str, list[float]]]], bool | None]


@dataclass(frozen=True)
class Protocol:
    name: str
    paper: str
    protocol: str  # the exact protocol, in words
    benchmark: str
    benchmark_params: dict[str, Any]
    methods: tuple[MethodSetting, ...]
    paper_numbers: dict[str, dict[str, float]]  # method -> metric -> value
    goals: tuple[Goal, ...]
    epochs: int = 1
    batch_size: int = 10
    model_params: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    notes: str = ""  # what differs from the paper and why, recorded under the table

    def runs(self, seeds: Sequence[int]) -> list[RunConfig]:
        """Run configs of every available method and seed (methods not yet in the library skipped)."""
        return [
            RunConfig(benchmark=self.benchmark, method=m.method, benchmark_params=self.benchmark_params,
                      method_params=m.params, model_params={**self.model_params, **m.model_params},
                      epochs=self.epochs, batch_size=m.batch_size or self.batch_size, seed=seed)
            for m in self.methods if m.method in METHODS for seed in seeds
        ]

    def missing_methods(self) -> list[str]:
        return [m.method for m in self.methods if m.method not in METHODS]

    def table(self, store_dir: Path, seeds: Sequence[int]) -> str:
        """Markdown of ours beside the paper's, from the finished runs in ``store_dir``."""
        return summary_table(self, collect(store_dir, self.runs(seeds)))


def near(method: str, metric: str, target: float, tolerance: float) -> Goal:
    def check(results: dict[str, dict[str, list[float]]]) -> bool | None:
        values = results.get(method, {}).get(metric)
        return None if not values else abs(statistics.mean(values) - target) <= tolerance

    return Goal(f"{method} {metric.upper()} within {tolerance * 100:g} points of {target:.3f}", check)


def above(method: str, others: Sequence[str], metric: str = "acc") -> Goal:
    def check(results: dict[str, dict[str, list[float]]]) -> bool | None:
        if method not in results:
            return None
        mine = statistics.mean(results[method][metric])
        present = [o for o in others if o in results]
        return all(mine > statistics.mean(results[o][metric]) for o in present) if present else None

    return Goal(f"{method} {metric.upper()} above {', '.join(others)}", check)


MLP_100 = {"hidden": [100, 100]}
GEM_TEXT = (
    "GEM paper protocol (Lopez-Paz & Ranzato 2017, Sec. 5; official run_experiments.sh): {bench}, "
    "20 tasks, 1000 training images per task drawn per task, the whole 10k test set per task, "
    "1 epoch, batch 10, MLP 784-100-100-10 (ReLU, Xavier), plain SGD, single head. single: lr "
    "{single}; independent: one 784-5-5-10 network per task (hidden 100/20), each initialised from "
    "the previous one (--finetune yes), lr {independent}; GEM: lr 0.1, 256 memories per task, "
    "memory_strength 0.5; EWC as the GEM script (lr {ewc_lr}, memory_strength {ewc_strength} on "
    "{ewc_memories} examples' Fisher); A-GEM and ER with their own defaults; OGD (GTL, 200 gradients per "
    "task) at lr 0.03, since its paper's 1e-3 barely moves in 100 steps per task. ACC/BWT as in "
    "the paper (T-1)."
)


def _gem(benchmark: str, single_lr: float, independent_lr: float, gem_acc: float,
         ewc: dict[str, Any]) -> Protocol:
    return Protocol(
        name=f"gem-{benchmark}",
        paper="Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning, NeurIPS 2017",
        protocol=GEM_TEXT.format(bench=benchmark, single=single_lr, independent=independent_lr,
                                 ewc_lr=ewc["lr"], ewc_strength=ewc["lamb"] / 2,
                                 ewc_memories=ewc["fisher_samples"]),
        benchmark=benchmark,
        benchmark_params={"n_tasks": 20, "train_per_task": 1000},
        model_params=MLP_100,
        methods=(
            MethodSetting("finetune", {"lr": single_lr}, note="GEM's 'single'"),
            MethodSetting("independent", {"lr": independent_lr, "init_from_previous": True},
                          {"hidden": [5, 5]}),
            MethodSetting("ewc", ewc, note="GEM's EWC: lamb = 2 x memory_strength, one Fisher "
                          "gradient on the first n_memories examples"),
            MethodSetting("gem", {"lr": 0.1, "n_memories": 256, "memory_strength": 0.5}),
            MethodSetting("agem", {}),
            MethodSetting("replay", {}),
            MethodSetting("ogd", {"lr": 0.03}, note="OGD at lr 0.03: its paper's 1e-3 barely moves in "
                          "100 steps per task"),
        ),
        paper_numbers={"gem": {"acc": gem_acc, "bwt": 0.0}},
        goals=(near("gem", "acc", gem_acc, 0.02), above("gem", ["finetune", "ewc", "independent"])),
        seeds=(0, 1, 2),
        notes=("OGD keeps 200 output gradients per task (up to 3800 vectors of 89,610 values, 1.4 GB) "
               "and projects every step onto their complement: one run takes 25-40 minutes on two "
               "busy cores, so only the seeds listed in its row have been run so far "
               "(`lifelong reproduce " + f"gem-{benchmark}" + " --only ogd` runs the rest)."),
    )


#: every kind of protocol `lifelong reproduce` runs
AnyProtocol = Protocol | RatioProtocol | OrdersProtocol | SleepProtocol | TextProtocol | BudgetProtocol

PROTOCOLS: dict[str, AnyProtocol] = {
    p.name: p for p in (
        _gem("permuted-mnist", single_lr=0.03, independent_lr=0.03, gem_acc=0.83,
             ewc={"lr": 0.1, "lamb": 6.0, "fisher_samples": 10, "fisher_batch": None}),
        _gem("rotated-mnist", single_lr=0.003, independent_lr=0.1, gem_acc=0.86,
             ewc={"lr": 0.01, "lamb": 2000.0, "fisher_samples": 1000, "fisher_batch": None}),
        Protocol(
            name="agem-permuted-mnist",
            paper="Chaudhry et al., Efficient Lifelong Learning with A-GEM, ICLR 2019 (and thesis)",
            protocol=(
                "A-GEM protocol: permuted MNIST, 20 tasks of the whole training set (60k here; the "
                "paper's TensorFlow split has 55k), the first 3 kept for hyper-parameter search and the "
                "other 17 trained and reported (here: 17 tasks of other seeded permutations), 1 epoch, "
                "batch 10, MLP 784-256-256-10, single head, SGD, 25 memories per class (250 per "
                "task), reference batch 256; average accuracy over the 17 tasks after the last."
            ),
            benchmark="permuted-mnist",
            benchmark_params={"n_tasks": 17, "train_per_task": None},
            model_params={"hidden": [256, 256]},
            methods=(
                MethodSetting("agem", {"memories_per_class": 25, "reference_batch_size": 256}),
            ),
            paper_numbers={"agem": {"acc": 0.891}},
            goals=(near("agem", "acc", 0.891, 0.02),),
            seeds=(0, 1, 2),
        ),
    )
}


HAT_TEXT = (
    "HAT paper protocol scaled to two CPU cores (Serrà et al. 2018, Sec. 4 and joansj/hat): "
    "multi-head task-incremental, each seed trains the tasks in its own shuffled order (order = "
    "seed + 1), every method and the joint reference on the same order; MLP 784-400-400 with one "
    "10-unit head per task (HAT's MLP has 2000 units and dropout), SGD lr 0.05 for every method "
    "(the HAT code's), batch 64, at most 200 epochs per task under the HAT code's validation "
    "schedule (15% of each task's training images held out; lr / 3 after 5 epochs without a lower "
    "validation loss, HAT's including its regulariser; stop below 1e-4; the best epoch's weights "
    "kept; joint validates on the newest task's held-out images, the HAT code on all tasks'); "
    "EWC at its defaults (per-task Fisher, lambda 1: the HAT code's lambda 5000 diverges without "
    "its gradient clipping); SI c=1 and MAS lambda=0.1 (strengths at which plain SGD stays stable "
    "on permuted MNIST); every other hyper-parameter "
    "at the method's paper default (`lifelong list`). Mixture: MNIST, "
    "Fashion-MNIST and 8x8 digits upscaled to 28x28 (the paper's 8-dataset mixture minus what is "
    "not available offline), 3000 training and 2000 test images per task (digits: all 1437 / 360). Permuted "
    "MNIST: 10 tasks, 3000 training images and 2000 test images per task. rho_{<=t} as in the "
    "paper, random = a stratified random classifier. As in the HAT code, PNN's columns are "
    "1.117 W / T wide so that all its columns hold about one network's parameters; PathNet's "
    "modules are sized to the same budget."
)
HAT_METHODS = (
    RatioMethod("finetune", {"lr": 0.05}, "sgd"),
    RatioMethod("frozen", {"lr": 0.05}, "sgd-f"),
    RatioMethod("ewc", {"lr": 0.05}),
    RatioMethod("si", {"lr": 0.05, "c": 1.0}),
    RatioMethod("mas", {"lr": 0.05, "lamb": 0.1}),
    RatioMethod("imm", {"lr": 0.05, "mode": "mean"}, "imm-mean"),
    RatioMethod("imm", {"lr": 0.05, "mode": "mode"}, "imm-mode"),
    RatioMethod("lwf", {"lr": 0.05}),
    RatioMethod("lfl", {"lr": 0.05}),
    RatioMethod("pathnet", {"lr": 0.05}),
    RatioMethod("pnn", {"lr": 0.05}),
    RatioMethod("packnet", {"lr": 0.05}),
    RatioMethod("hat", {"lr": 0.05}),
)
PROTOCOLS["hat-forgetting-ratio"] = RatioProtocol(
    name="hat-forgetting-ratio",
    paper="Serrà, Surís, Miron & Karatzoglou, Overcoming Catastrophic Forgetting with Hard "
          "Attention to the Task, ICML 2018",
    protocol=HAT_TEXT,
    benchmarks=(
        RatioBenchmark("mixture", {"train_per_task": 3000, "test_per_task": 2000},
                       paper={"hat": (-0.02, -0.06), "lwf": (-0.14, -0.80), "lfl": (-0.73, -0.92)},
                       method_params={"pnn": {"width_scale": round(1.117 / 3, 4)}}),
        RatioBenchmark("permuted-mnist", {"n_tasks": 10, "train_per_task": 3000, "test_per_task": 2000,
                                          "scenario": "task"},
                       method_params={"pnn": {"width_scale": round(1.117 / 10, 4)}}),
    ),
    methods=HAT_METHODS,
    goal_method="hat",
    goal_floor=-0.10,
    reference=RatioMethod("joint", {"lr": 0.05}),
    model_params={"hidden": [400, 400]},
    epochs=200,
    schedule={"valid_fraction": 0.15},
    batch_size=64,
    seeds=(0, 1, 2),
    notes=(
        "Where ours differs from the paper, and why. Trained to convergence under the HAT code's "
        "validation schedule, forgetting now bites where the paper says it does: SGD falls to "
        "rho -0.13 after the third mixture task (seed 0: -0.18), SI -0.10, IMM-mean -0.10, LFL "
        "-0.85 (paper -0.92), while HAT forgets nothing at all (its final accuracies equal its "
        "learning accuracies) and ends at -0.01 on the mixture and -0.02 after the 10th permuted "
        "task (paper: -0.06 on its 8-dataset mixture), well above the -0.10 floor. It is not the "
        "best: on the mixture PackNet (-0.007), PathNet (-0.007), PNN (-0.007) and LwF (-0.010) "
        "end within 0.005 of HAT (-0.012), inside the spread over seeds; on permuted MNIST PNN "
        "(-0.007) and PackNet (-0.012) are ahead of HAT (-0.021) and LwF level (-0.021). HAT loses "
        "only on learning accuracy (mean diagonal 0.898 mixture / 0.896 permuted against joint's "
        "0.907 / 0.910 and PNN's 0.901 / 0.907): its sparsity term (c = 0.75) and the annealed "
        "gates cost about one point on each new task. The paper's ranking comes from data we do "
        "not have offline (CIFAR-10/100, SVHN, traffic signs, FaceScrub, notMNIST: see DATA.md): "
        "on those an AlexNet split into 1/T-wide PNN columns or PathNet modules runs out of "
        "capacity, and LwF's distillation on inputs unlike the old tasks' collapses (paper -0.80); "
        "on MNIST-like tasks with 2550 training images a 45-unit PNN column or PackNet's 25% of "
        "the weights already reach joint accuracy, and new MNIST-like inputs exercise the old "
        "heads as well as old data would. EWC at lambda 1 is indistinguishable from SGD here (the "
        "HAT code's 5000 diverges at lr 0.05). The earlier 10-epoch protocol without the schedule "
        "(recorded before) left every method under-trained, so plain SGD hardly forgot (-0.05)."
    ),
)


APD_SPLIT = {"train_per_task": None, "test_per_task": 2000}
PROTOCOLS["apd-order-robustness"] = OrdersProtocol(
    name="apd-order-robustness",
    paper="Yoon, Kim, Yang & Hwang, Scalable and Order-robust Continual Learning with Additive "
          "Parameter Decomposition, ICLR 2020",
    protocol=(
        "APD paper's order-robustness study (Sec. 4) on the data available here: split MNIST and "
        "split Fashion-MNIST (5 tasks of 2 classes) and permuted MNIST (5 tasks of 10 classes), all "
        "task-incremental (one head per task), every training image of the split benchmarks "
        "(about 12,000 per task, as the paper trains on whole splits) and 12,000 per permuted "
        "task, 2000 test images per task; each "
        "method trains every benchmark under 5 task orders (0: the stream's own, 1-4: seeded "
        "shuffles) for each seed; MLP 784-100-100 (GEM's); 20 epochs of minibatches of 100 per "
        "task (the APD code's); every method at its own defaults (`lifelong list`: APD and DEN "
        "Adam 1e-3 with 0.95 decay per epoch as their codes, the others plain SGD at their papers' "
        "rates) except APD's lambda1 on permuted MNIST, 1e-3 for its default 4e-4 (the code sets "
        "it per dataset; chosen on seed 0, order 0 by capacity alone). ACC: mean final accuracy "
        "over tasks; capacity: parameters needed after the last "
        "task relative to one network (APD and DEN count non-zero ones, the others all they hold); "
        "MOPD / AOPD: largest / mean over tasks of max minus min final accuracy over the 5 orders, "
        "in points, per seed, then mean ± std over seeds."),
    benchmarks=(
        OrdersBenchmark("split-mnist", APD_SPLIT),
        OrdersBenchmark("split-fashion-mnist", APD_SPLIT),
        # permuted tasks share no first-layer features: APD's sparsity chosen per benchmark, as the
        # APD code does per dataset (l1_hyp 4e-4 CIFAR-100 Split, 6e-4 Superclass); see the notes
        OrdersBenchmark("permuted-mnist", {"n_tasks": 5, "scenario": "task", "train_per_task": 12000,
                                            "test_per_task": 2000},
                        method_params={"apd": {"lambda1": 1e-3}}),
    ),
    methods=(RatioMethod("apd"), RatioMethod("independent"), RatioMethod("finetune"), RatioMethod("ewc"),
             RatioMethod("pnn"), RatioMethod("den"), RatioMethod("hat")),
    goal_methods=("apd",),
    model_params={"hidden": [100, 100]},
    epochs=20,
    batch_size=100,
    seeds=(0, 1),
    notes=(
        "Where ours differs from the paper, and why. The protocol trains on whole splits since "
        "2026-11-21: with 2000 images per task (400 Adam steps; store "
        "reproductions/apd-order-robustness-2000) APD's tau_t, which starts as a copy of sigma as "
        "in the APD code, stayed 30-80% dense and the capacity after 5 tasks was 1.8x / 2.0x / "
        "3.0x. With about 2,500 steps per task the CIFAR default lambda1 = 4e-4 gives 1.13x / "
        "1.10x on the split benchmarks, the paper's regime. Permuted tasks share no first-layer "
        "features (each permutes the pixels), so at 4e-4 every tau keeps a dense private first "
        "layer: 2.00x, 94.99 ± 0.18%, MOPD 2.45 ± 0.14 (seeds 0-1, 5 orders); at lambda1 = 1e-3, "
        "chosen on seed 0, order 0 by capacity alone (1.29x, 93.5%), the protocol's setting gives "
        "the row above. The paper has no permuted benchmark. APD is within 2 points of one network "
        "per task everywhere, above it on the split benchmarks. Its MOPD is not the lowest: it "
        "forgets nothing (final accuracy within 0.06 points of each task's accuracy when learnt), "
        "so all its disparity is in how well a task is learnt at each position. The first task "
        "trains sigma freely; a later one learns through a mask over sigma, which lambda2 holds "
        "near the earlier tasks' solutions, plus an L1-penalised tau. Split MNIST's task 2-3 "
        "reaches 99.70-99.75% when trained first and 98.95-99.35% later. Learnt-accuracy "
        "disparities, MOPD over R[t, t]: APD 0.83 / 0.90 / 2.47 (lambda1 4e-4), one plain network "
        "before it forgets (finetune) 0.58 / 0.47 / 0.92, independent 0.25 / 0.65 / 0.87, HAT 0.60 "
        "/ 0.38 / 5.78 (whole units per task; 100 units run short on permuted MNIST). In the "
        "paper the other methods' disparities come from forgetting on CIFAR-100, several points; "
        "here the isolating methods forget nothing either, and their differences on the split "
        "benchmarks are 5-20 of 2000 test images. Sparsity sets the trade: less private capacity "
        "per task makes what a task learns depend more on what came before it. On permuted MNIST "
        "lambda1 1e-3 cuts capacity from 2.00x to 1.29x and raises MOPD from 2.45 to 4.47; at 2000 "
        "images per task on split MNIST 2e-3 cut it from 1.82x to 1.24x and raised MOPD from 0.78 "
        "to 1.87. The other way, on whole split MNIST lambda1 = 1e-4 gives MOPD 0.50 ± 0.07 "
        "(below HAT's 0.60, above PNN's 0.30 and independent's 0.25) at 1.58x, ACC 99.72% "
        "(seeds 0-1 x 5 orders: `lifelong orders --benchmark split-mnist --method apd --epochs 20 "
        "--batch-size 100 --param train_per_task=none --param test_per_task=2000 --param "
        "lambda1=1e-4 --seeds 0,1`). No setting here meets all three goals."
    ),
)


PROTOCOLS[SLEEP_PROTOCOL.name] = SLEEP_PROTOCOL
PROTOCOLS.update(mirzadeh_protocols())
PROTOCOLS.update(CTR_PROTOCOLS)
PROTOCOLS[REMIND_BUDGET.name] = REMIND_BUDGET


def get_protocol(name: str) -> AnyProtocol:
    if name not in PROTOCOLS:
        raise ParamError(f"protocol={name!r} is unknown; allowed values: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def collect(store_dir: Path, runs: Sequence[RunConfig]) -> dict[str, dict[str, list[float]]]:
    """method -> metric -> values over seeds, from the finished runs of ``runs`` in the store."""
    keys = {config.key() for config in runs}
    results: dict[str, dict[str, list[float]]] = {}
    for record in Store(store_dir).runs(status="done"):
        if record.key in keys and record.metrics:
            per_metric = results.setdefault(record.method, {})
            for metric, value in record.metrics.items():
                per_metric.setdefault(metric, []).append(value)
    return results


def summary_table(protocol: Protocol, results: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: paper vs ours (mean ± std over seeds) for ACC and BWT, then the goals' verdicts."""
    lines = ["| method | seeds | paper ACC | ours ACC | paper BWT | ours BWT | ours FWT |",
             "|---|---|---|---|---|---|---|"]
    for setting in protocol.methods:
        name = setting.method
        paper = protocol.paper_numbers.get(name, {})
        ours = results.get(name)
        if ours is None:
            status = "not in the library yet" if name not in METHODS else "no finished run"
            lines.append(f"| {name} | - | {_fmt(paper.get('acc'))} | ({status}) | "
                         f"{_fmt(paper.get('bwt'))} | | |")
            continue
        lines.append(f"| {name} | {len(ours['acc'])} | {_fmt(paper.get('acc'))} | "
                     f"{_mean_std(ours['acc'])} | {_fmt(paper.get('bwt'))} | "
                     f"{_mean_std(ours['bwt'])} | {_mean_std(ours.get('fwt', []))} |")
    lines.append("")
    for goal in protocol.goals:
        verdict = goal.check(results)
        mark = {True: "PASS", False: "FAIL", None: "NOT RUN"}[verdict]
        lines.append(f"- Goal: {goal.text}: **{mark}**")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def record_section(path: Path, protocol: Protocol, seeds: Sequence[int], table: str,
                   command: str) -> None:
    """Replace (or append) the protocol's section in ``REPRODUCTIONS.md``."""
    from lifelong.io import atomic_write_text

    heading = f"## {protocol.name}"
    body = "\n".join([
        heading, "",
        f"Paper: {protocol.paper}.", "",
        f"Protocol: {protocol.protocol}", "",
        f"Seeds: {', '.join(map(str, seeds))}. Command: `{command}`. "
        f"Recorded {datetime.date.today().isoformat()}.", "",
        table, "",
        *([protocol.notes, ""] if protocol.notes else []),
    ])
    text = path.read_text() if path.exists() else "# Reproductions\n\n"
    sections = text.split("\n## ")
    head, rest = sections[0], ["## " + s for s in sections[1:]]
    rest = [s for s in rest if not s.startswith(heading + "\n")]
    rest.append(body)
    rest.sort(key=lambda s: s.split("\n", 1)[0])
    atomic_write_text(path, head.rstrip("\n") + "\n\n" + "\n".join(s.rstrip("\n") + "\n" for s in rest))
