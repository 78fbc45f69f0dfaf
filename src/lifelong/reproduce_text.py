"""CTR's text protocol: accuracy and macro-F1 after the last task, every text method, over task orders.

Ke, Liu, Ma, Xu & Shu (NeurIPS 2021, "Achieving Forgetting Prevention and Knowledge Transfer in
Continual Learning", Sec. 5) train a BERT-base encoder with continual-learning plugins (CTR,
`lifelong.methods.ctr`) on task sequences of text classification, each sequence in several random
task orders, and compare the accuracy and the macro-F1 after the last task with naive continual
learning (NCL: one model trained on every task in turn), one model per task (ONE), multi-task
learning (MTL) and other continual methods. On 20 Newsgroups (10 tasks of 2 newsgroups) the paper
reports ACC 95.25 for CTR, 95.22 for HAT on adapters, 95.07 for B-CL, 68.29 for Adapter-BERT NCL
and 96.77 for MTL.

A `TextProtocol` runs every method of its list (a `TextMethod`: a method, its parameters, the
model parameters it needs, e.g. ``freeze=False`` to fine-tune the whole encoder or ``hidden`` for
HAT's gated layers) on each benchmark under ``n_orders`` task orders (the run config's ``order``:
0 the stream's own, 1... seeded shuffles, `lifelong.experiments.orders`) for each seed, as one
resumable sweep, and tabulates per method the ACC and macro-F1 (`lifelong.metrics.macro_f1`) after
the last task (mean ± std over seeds x orders) beside the paper's ACC, with the seconds per
training step and per task, and checks the goals: CTR within ``tolerance`` of MTL (``joint``), CTR
above every other continual method, naive fine-tuning at least ``margin`` below CTR.

The scale is one dict: `CPU_SCALE` (the default, `SCALE`) fits two CPU cores; `PAPER_SCALE` holds
the paper's settings (all the data, 128 tokens, 20 epochs, BERT-base). Set ``SCALE = PAPER_SCALE``
(or build the protocols with ``ctr_protocol(benchmark, PAPER_SCALE)``) to run them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.experiments.orders import order_configs
from lifelong.experiments.run_config import RunConfig
from lifelong.experiments.runner import finished_result
from lifelong.experiments.store import Store
from lifelong.methods import METHODS
from lifelong.reproduce_ratio import RatioMethod


@dataclass(frozen=True)
class TextMethod(RatioMethod):
    """A labelled method setting that also carries its model's parameters."""

    #: model parameters of this method's runs, over the protocol's (``freeze``, ``hidden``...)
    model_params: dict[str, Any] = field(default_factory=dict)
    #: what the setting is, in words (a table column), e.g. "NCL, whole encoder fine-tuned"
    setting: str = ""
    #: False for the non-continual references (ONE, MTL): they do not compete in the goals
    continual: bool = True


@dataclass(frozen=True)
class TextBenchmark:
    benchmark: str
    params: dict[str, Any]
    #: the paper's numbers, label -> metric (``acc``, ``macro_f1``) -> value in percent
    paper: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class TextRow:
    """One method's finished runs on one benchmark: final ACC and macro-F1 of each, and timings."""

    label: str
    seeds: int
    orders: int
    acc: list[float]
    macro_f1: list[float]
    seconds_per_step: float | None
    seconds_per_task: float
    seconds_per_run: float

    @property
    def runs(self) -> int:
        return len(self.acc)

    @property
    def mean_acc(self) -> float:
        return statistics.fmean(self.acc)


@dataclass(frozen=True)
class TextProtocol:
    name: str
    paper: str
    protocol: str
    benchmarks: tuple[TextBenchmark, ...]
    methods: tuple[TextMethod, ...]
    goal_method: str = "ctr"
    reference: str = "joint"  # MTL
    #: the naive continual baselines (NCL): the whole encoder fine-tuned, and Adapter-BERT NCL (the
    #: paper's quoted "naive" number, 68.29 on 20News); each must stay ``margin`` below goal_method
    baselines: tuple[str, ...] = ("finetune", "adapter")
    tolerance: float = 0.02  # goal: goal_method at most this far below the reference
    margin: float = 0.10  # goal: each baseline at least this far below goal_method
    n_orders: int = 2
    tasks: int | None = None  # only the first N tasks of each benchmark (None: all)
    model: str = "transformer"
    model_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 32
    seeds: tuple[int, ...] = (0, 1)
    schedule: dict[str, Any] | None = None
    notes: str = ""

    def available(self) -> list[TextMethod]:
        return [m for m in self.methods if m.method in METHODS]

    def missing_methods(self) -> list[str]:
        return [m.name for m in self.methods if m.method not in METHODS]

    def base(self, bench: TextBenchmark, method: TextMethod) -> RunConfig:
        return RunConfig(benchmark=bench.benchmark, method=method.method, model=self.model,
                         benchmark_params=bench.params, method_params=dict(method.params),
                         model_params={**self.model_params, **method.model_params},
                         tasks=self.tasks, epochs=self.epochs, batch_size=self.batch_size,
                         schedule=self.schedule)

    def labelled_runs(self, bench: TextBenchmark, seeds: Sequence[int]) -> list[tuple[str, RunConfig]]:
        """(label, config) of every available method, order and seed on ``bench``."""
        return [(method.name, config) for method in self.available()
                for config in order_configs(self.base(bench, method), self.n_orders, seeds)]

    def runs(self, seeds: Sequence[int]) -> list[RunConfig]:
        return [config for bench in self.benchmarks for _, config in self.labelled_runs(bench, seeds)]

    def rows(self, store_dir: str | Path, bench: TextBenchmark, seeds: Sequence[int]) -> dict[str, TextRow]:
        """label -> row, for the methods with at least one finished run on ``bench``."""
        store = Store(store_dir)
        finished: dict[str, list[tuple[RunConfig, Any]]] = {}
        for label, config in self.labelled_runs(bench, seeds):
            result = finished_result(store.run_dir(config))
            if result is not None:
                finished.setdefault(label, []).append((config, result))
        rows = {}
        for label, runs in finished.items():
            results = [result for _, result in runs]
            steps = [sum(r.train_steps) for r in results]
            seconds = [sum(r.train_seconds) for r in results]
            rows[label] = TextRow(
                label=label,
                seeds=len({config.seed for config, _ in runs}),
                orders=len({config.order for config, _ in runs}),
                acc=[r.metrics["acc"] for r in results],
                macro_f1=[r.metrics["macro_f1"] for r in results if "macro_f1" in r.metrics],
                seconds_per_step=sum(seconds) / sum(steps) if all(steps) else None,
                seconds_per_task=statistics.fmean(s / len(r.train_seconds)
                                                  for s, r in zip(seconds, results, strict=True)),
                seconds_per_run=statistics.fmean(r.total_seconds for r in results))
        return rows

    def table(self, store_dir: Path, seeds: Sequence[int]) -> str:
        blocks = []
        for bench in self.benchmarks:
            rows = self.rows(store_dir, bench, seeds)
            params = ", ".join(f"{k}={v}" for k, v in bench.params.items())
            blocks.append(f"**{bench.benchmark}** ({params})\n\n{self.render(bench, rows)}\n\n"
                          + "\n".join(self.verdicts(bench.benchmark, rows)))
        return "\n\n".join(blocks)

    def render(self, bench: TextBenchmark, rows: Mapping[str, TextRow]) -> str:
        """Markdown: per method its setting, runs, ACC and macro-F1 (%, mean ± std), the paper's
        ACC, and the seconds per training step, per task and per run."""
        lines = ["| method | setting | runs (seeds x orders) | ACC % | macro-F1 % | paper ACC % | "
                 "s / step | s / task | min / run |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for method in self.methods:
            paper = bench.paper.get(method.name, {})
            paper_acc = "-" if "acc" not in paper else f"{paper['acc']:.2f}"
            row = rows.get(method.name)
            if row is None:
                status = "not in the library yet" if method.method not in METHODS else "no finished run"
                lines.append(f"| {method.name} | {method.setting} | - | ({status}) | | {paper_acc} | | | |")
                continue
            step = "-" if row.seconds_per_step is None else f"{row.seconds_per_step:.2f}"
            lines.append(
                f"| {method.name} | {method.setting} | {row.runs} ({row.seeds} x {row.orders}) | "
                f"{_pm(row.acc)} | {_pm(row.macro_f1)} | {paper_acc} | {step} | "
                f"{row.seconds_per_task:.0f} | {row.seconds_per_run / 60:.1f} |")
        return "\n".join(lines)

    def verdicts(self, benchmark: str, rows: Mapping[str, TextRow]) -> list[str]:
        """The goals on one benchmark: PASS, FAIL or NOT RUN (a needed row is missing).

        CTR within ``tolerance`` of MTL, CTR above every other continual method, and each naive
        baseline at least ``margin`` below CTR (one verdict per baseline).
        """
        mine, reference = rows.get(self.goal_method), rows.get(self.reference)
        continual = {m.name for m in self.methods if m.continual and m.name != self.goal_method}
        others = [row.mean_acc for label, row in rows.items() if label in continual]
        checks = [
            (f"{self.goal_method} ACC at most {100 * self.tolerance:g} points below {self.reference} "
             "(MTL)",
             None if mine is None or reference is None
             else mine.mean_acc >= reference.mean_acc - self.tolerance - 1e-12),
            (f"{self.goal_method} ACC above every other continual method "
             f"({', '.join(sorted(continual))})",
             None if mine is None or not others else all(mine.mean_acc > acc for acc in others)),
        ]
        for label in self.baselines:
            baseline = rows.get(label)
            checks.append(
                (f"{label} (NCL) ACC at least {100 * self.margin:g} points below {self.goal_method}",
                 None if mine is None or baseline is None
                 else baseline.mean_acc <= mine.mean_acc - self.margin + 1e-12))
        marks = {True: "PASS", False: "FAIL", None: "NOT RUN"}
        return [f"- Goal: {benchmark}: {text}: **{marks[check]}**" for text, check in checks]


def _pm(values: Sequence[float]) -> str:
    """Mean ± std of fractions, in percent."""
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1 or math.isnan(mean):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


# ------------------------------------------------------------------------------------ the scales
#: Two CPU cores (`CPU_COST` says what it costs). Every value here is a protocol setting.
CPU_SCALE: dict[str, Any] = {
    "encoder": None,  # all-MiniLM-L6-v2: 6 layers, hidden size 384, 22.7M parameters
    "pooling": "mean",  # what MiniLM was trained with
    "max_length": 64,  # tokens per document / tweet, [CLS] and [SEP] included
    "train_per_task": 160,  # training examples per task (stratified draw), None: all
    "test_per_task": 100,  # test examples per task, None: all (every task is scored T + 1 times)
    "tasks": None,  # the first N tasks only (None: all 10 of 20news, all 6 of tweet-domains)
    "epochs": 3,
    "batch_size": 32,
    "plugin_lr": 1e-3,  # Adam: ctr, adapter, adapter-one, adapter-hat (the code: 5e-5, ~1000 steps)
    "encoder_lr": 5e-5,  # BERT's Adam, the whole encoder fine-tuned: finetune, independent, joint
    "frozen_lr": 0.5,  # SGD on top of the frozen encoder: ewc, agem, replay, hat
    "hidden": (400,),  # the (gated, for hat) layer on the frozen encoder of ewc, agem, replay, hat
    "seeds": (0,),  # `lifelong reproduce ... --seeds 0,1` doubles the runs (and the cost)
    "n_orders": 2,  # order 0 (CTR's class pairs / the domain list) and one seeded shuffle
    # settings that differ on one benchmark, over the ones above. Tweets are short (a median of
    # 31-39 tokens per domain; 48 keeps 85-98% of each domain's tweets whole) and plentiful, and
    # 3 unbalanced sentiments need more distinct examples than 2 newsgroups: at 160 tweets seen 3
    # times ctr predicted each domain's majority sentiment (ACC 68.7, macro-F1 33.9; the majority
    # scores 67.0), at 640 seen once (the same cost) it learns the airline domain (76 against 63).
    "per_benchmark": {"tweet-domains": {"max_length": 48, "train_per_task": 640, "epochs": 1}},
}
#: The paper's settings (CTR, PyContinual): BERT-base with its pooled output, all the data, 128
#: tokens, 20 epochs of batch 32 (newsgroup and DSC), Adam at 5e-5 for the plugins, 5 task orders.
PAPER_SCALE: dict[str, Any] = {
    **CPU_SCALE,
    "encoder": "bert-base-uncased",
    "pooling": "pooler",
    "max_length": 128,
    "train_per_task": None,
    "test_per_task": None,
    "epochs": 20,
    "plugin_lr": 5e-5,
    "hidden": (768,),
    "seeds": (0,),
    "n_orders": 5,
    "per_benchmark": {},
}
#: The scale `CTR_PROTOCOLS` are built at: the one change that runs the paper's settings.
SCALE = CPU_SCALE

PAPER = ("Ke, Liu, Ma, Xu & Shu, Achieving Forgetting Prevention and Knowledge Transfer in "
         "Continual Learning (CTR), NeurIPS 2021")
#: 20News after the last task (the paper's Table 2, BERT-base, ACC in %).
PAPER_20NEWS = {"ctr": {"acc": 95.25}, "adapter-hat": {"acc": 95.22}, "adapter": {"acc": 68.29},
                "joint": {"acc": 96.77}}


def text_methods(scale: Mapping[str, Any]) -> tuple[TextMethod, ...]:
    """Every text method of the protocol, with its learning rate and model parameters."""
    plugin, encoder, frozen = ({"lr": scale["plugin_lr"]}, {"lr": scale["encoder_lr"], "optimizer": "adam"},
                               {"lr": scale["frozen_lr"]})
    unfrozen, gated = {"freeze": False}, {"hidden": tuple(scale["hidden"])}
    return (
        TextMethod("ctr", plugin, setting="CL-plugins in the frozen encoder (KSM + HAT-masked TSM)"),
        TextMethod("adapter-hat", plugin, setting="HAT masks on adapter units, frozen encoder"),
        TextMethod("adapter", plugin, setting="NCL: one adapter set, frozen encoder"),
        TextMethod("adapter-one", plugin, setting="ONE: an adapter set per task", continual=False),
        TextMethod("finetune", encoder, model_params=unfrozen, setting="NCL: whole encoder fine-tuned"),
        TextMethod("independent", encoder, model_params=unfrozen,
                   setting="ONE: a fine-tuned encoder per task", continual=False),
        TextMethod("joint", encoder, model_params=unfrozen,
                   setting="MTL: whole encoder on all tasks so far", continual=False),
        TextMethod("ewc", frozen, model_params=gated, setting="frozen encoder + hidden layer + head"),
        TextMethod("agem", frozen, model_params=gated, setting="frozen encoder + hidden layer + head"),
        TextMethod("replay", frozen, model_params=gated, setting="frozen encoder + hidden layer + head"),
        TextMethod("hat", frozen, model_params=gated, setting="frozen encoder + gated hidden layer + head"),
    )


def benchmark_scale(scale: Mapping[str, Any], benchmark: str) -> dict[str, Any]:
    """``scale``'s settings on ``benchmark``: its ``per_benchmark`` changes applied."""
    return {**scale, **scale.get("per_benchmark", {}).get(benchmark, {})}


def protocol_text(benchmark: str, scale: Mapping[str, Any], cost: str = "") -> str:
    data = {"20news": "20 Newsgroups as CTR's 10 tasks of 2 newsgroups (its class pairs)",
            "tweet-domains": "tweet sentiment in 6 domains (3 classes each, one task per domain)"}[benchmark]
    cap = lambda n: "all" if n is None else str(n)  # noqa: E731
    tasks = "all" if scale["tasks"] is None else f"the first {scale['tasks']}"
    encoder = "all-MiniLM-L6-v2 (mean pooling)" if scale["encoder"] is None else (
        f"{scale['encoder']} ({scale['pooling']} pooling)")
    return (
        f"CTR's task-incremental text protocol at the scale `lifelong.reproduce_text.SCALE`: {data}, "
        f"{tasks} tasks, each seed under {scale['n_orders']} task orders (0: the stream's own, then seeded "
        f"shuffles); {cap(scale['train_per_task'])} training and {cap(scale['test_per_task'])} test "
        f"examples per task (stratified draws), {scale['max_length']} tokens, {_epochs(scale['epochs'])} "
        f"of batch {scale['batch_size']} per task, encoder {encoder}, one head unit per class of "
        f"each task. CTR, adapter-hat, adapter (NCL) and adapter-one (ONE) train their plugins, the "
        f"LayerNorms and the head with Adam at lr {scale['plugin_lr']:g} (their other "
        f"hyper-parameters at the CTR code's defaults: adapter size 2000, smax 400, c 0.75, 3 x 3 "
        f"transfer capsules) on the frozen encoder; finetune (NCL), independent (ONE) and joint "
        f"(MTL) fine-tune the whole encoder with BERT's Adam (AdamW, eps 1e-6, weight decay 0.01 "
        f"off biases and LayerNorms) at lr {scale['encoder_lr']:g}; ewc, agem, "
        f"replay and hat train a {'-'.join(map(str, scale['hidden']))}-unit hidden layer (gated "
        f"for hat) and the head on the frozen encoder with SGD at lr {scale['frozen_lr']:g}, other "
        f"hyper-parameters at their defaults (`lifelong list`). ACC and macro-F1 (over each task's "
        f"classes) after the last task, mean over tasks, then mean ± std over seeds x orders. "
        f"{cost}"
    ).rstrip()


def _epochs(n: int) -> str:
    return "1 epoch" if n == 1 else f"{n} epochs"


#: What `CPU_SCALE` costs, as measured (`lifelong run --benchmark 20news --model transformer
#: --tasks 2` at these settings, and the ctr runs of `lifelong reproduce ctr-20news`).
CPU_COST = (
    "Scaled to two CPU cores, and still slow. On two free cores a ctr run of 20news takes 13 "
    "minutes (benchmarks/RESULTS.md): per task 34-50 s of training (15 steps of 32 x 64 tokens, "
    "about 2.7 s each) and 28-42 s scoring the 1,000 test examples of all ten tasks (every task "
    "after every task); a finetune run (the whole encoder, Adam) takes about 4 minutes (42 s for "
    "two tasks). Measured "
    "earlier on the same cores shared with other jobs (load average 6-7), one step took 18 s "
    "for ctr, 14-16 s for adapter-hat, 9-10 s for finetune and 1.4-1.7 s for ewc on the frozen "
    "encoder (its features are cached after their first computation), about five times the free "
    "cores' time. The recorded ctr-20news sweep took about 83 minutes per seed x order (the "
    "table's last column: ctr 14, the adapter methods 10-12, finetune and independent 5-6, "
    "joint 23, as it retrains every earlier task, the frozen-encoder methods under 1), so the "
    "default 1 seed x 2 orders takes about 3 hours; ctr-tweet-domains (6 tasks) about half; "
    "`--seeds 0,1` doubles either. The sweep resumes: finished runs are kept in its store."
)


NOTES_COMMON = (
    "Where ours differs from the paper, and why. The encoder is all-MiniLM-L6-v2 (6 layers, "
    "hidden size 384, mean pooling), not BERT-base (12 layers, 768, the pooled output); texts are "
    "cut short (20news: 64 tokens, tweets: 48; the paper: 128), each task trains for 15-20 steps "
    "of 32 (20news: 160 stratified examples for 3 epochs, tweets: 640 for one; the paper: all of "
    "them, about 1,000 per 20News task, for 20 epochs, the best epoch on validation kept) and is "
    "scored on 100 test examples. With 15-20 steps instead of about 1,000, the code's Adam lr 5e-5 would leave the plugins and the head where they "
    "started: ctr and the adapter methods train at 1e-3 (with it ctr and adapter-hat reach 93.5% "
    "on the first 20news task). NCL / ONE / MTL fine-tune the whole encoder with the code's "
    "BertAdam rate, 5e-5 (`optimizer='adam'`): on the first two 20news tasks finetune reaches ACC "
    "84.5 at 5e-5, 79.0 at 2e-4, 50.0 at 1e-3 (diverged), against 73.0 with SGD at 0.01 (scored "
    "on 200 test examples per task), the best SGD rate (0.05 and 0.1 fall to 55.5% and 52.5% on "
    "the first task). ewc, agem, replay and hat "
    "are plain SGD on the frozen encoder (the code's are BertAdam at 5e-5). The frozen-encoder methods "
    "train a 400-unit hidden layer (gated for hat: HAT needs units to mask; ewc, agem and replay "
    "get the same layer, without which the task-incremental heads share nothing to forget) and the "
    "head at lr 0.5: MiniLM's mean-pooled features vary by 0.15 per dimension around a common "
    "direction, and lr 0.05 leaves the first task at 72% where 0.5 reaches 93%. The paper's "
    "baselines on the frozen encoder put a CNN over BERT's token outputs; here a hidden layer "
    "reads the pooled feature. B-CL, KAN, SRK, CAT and the paper's other baselines are not in "
    "the library. The paper's settings are `lifelong.reproduce_text.PAPER_SCALE`."
)


def ctr_protocol(benchmark: str, scale: Mapping[str, Any] = SCALE) -> TextProtocol:
    """CTR's protocol on ``benchmark`` (``20news`` or ``tweet-domains``) at ``scale``."""
    if benchmark not in ("20news", "tweet-domains"):
        raise ValueError(f"benchmark={benchmark!r}: the CTR text protocol runs on 20news or tweet-domains")
    at_cpu_scale, scale = scale is CPU_SCALE, benchmark_scale(scale, benchmark)
    params = {key: scale[key] for key in ("max_length", "train_per_task", "test_per_task")}
    return TextProtocol(
        name=f"ctr-{benchmark}",
        paper=PAPER,
        protocol=protocol_text(benchmark, scale, CPU_COST if at_cpu_scale else ""),
        benchmarks=(TextBenchmark(benchmark, params,
                                  paper=PAPER_20NEWS if benchmark == "20news" else {}),),
        methods=text_methods(scale),
        n_orders=scale["n_orders"],
        tasks=scale["tasks"],
        model_params={"encoder": scale["encoder"], "pooling": scale["pooling"]},
        epochs=scale["epochs"],
        batch_size=scale["batch_size"],
        seeds=tuple(scale["seeds"]),
        notes=NOTES[benchmark] if at_cpu_scale else "",
    )


NOTES: dict[str, str] = {
    "20news": NOTES_COMMON + (
        " The corpus is the 'bydate' single-label version with its own train / test split (CTR "
        "splits the 19,997-document version 80/10/10), letters only, the subject line first."
        "\n\n"
        "What the smaller encoder and the CPU scale change (seed 0, orders 0 and 1, recorded "
        "2026-11-22). (1) The frozen-encoder methods beat CTR: ewc 89.9 and agem 90.4 against "
        "ctr's 87.7, with almost no forgetting (at most 0.1 points). all-MiniLM-L6-v2 is a "
        "sentence-embedding model: its mean-pooled features were trained to place texts by "
        "meaning, so a hidden layer and a head on the frozen encoder already separate newsgroups. "
        "With the first token's state instead (pooling='cls', the kind of feature a generic BERT "
        "gives without a sentence objective) ewc falls to 78.4 (`lifelong run --benchmark 20news "
        "--model transformer --method ewc --epochs 3 --batch-size 32 --param max_length=64 "
        "--param train_per_task=160 --param test_per_task=100 --param hidden=400 --param "
        "pooling=cls --lr 0.05`, order 0; lr 0.5 diverges on these larger features). The "
        "paper's frozen-BERT baselines start from such generic features; ours do not, so 'ctr "
        "above every other continual method' fails against ewc and agem and holds against every "
        "method that trains inside the encoder (adapter-hat 83.4, finetune 83.1, adapter 65.7) "
        "and against replay and hat (86.4). (2) ctr forgets little (1.2 and 2.3 points) but "
        "learns each task less well than a separate adapter set does in the same 15 steps "
        "(learning accuracy 88.7 / 86.9 against adapter-one's 92.1 / 90.1), so it ends about 4 "
        "points below MTL (joint 92.2) rather than within 2; the paper trains about 600 steps per "
        "task. (3) Fine-tuning the whole encoder at BERT's rate moves it little in 15 steps: "
        "finetune forgets 5.1 and 10.3 points and ends 4.7 points below ctr, not 10. Adapter-BERT "
        "NCL, the paper's quoted naive number, does reproduce: 65.7 against 68.29 (forgetting 21 "
        "and 29 points), 22 points below ctr. (4) adapter-hat forgets 2.0 and 6.8 points: its "
        "LayerNorms are shared and trained, as in the code, and Adam moves partly masked weights "
        "at full step size (`lifelong.methods.adapter_hat`)."),
    "tweet-domains": NOTES_COMMON + (
        " The paper has no tweet benchmark (its DSC sentiment data is not available offline): "
        "tweet-domains is the closest here (3 sentiments per domain, task-incremental), so no "
        "paper number stands beside ours."),
}

#: ``PROTOCOLS.update(CTR_PROTOCOLS)`` registers them with `lifelong reproduce`.
CTR_PROTOCOLS: dict[str, TextProtocol] = {
    p.name: p for p in (ctr_protocol("20news"), ctr_protocol("tweet-domains"))
}
