"""Speed of GEM and A-GEM training steps on the GEM protocol, next to their FLOPs and the machine's peak.

What it measures: ``gem`` and ``agem`` (official defaults: GEM lr 0.1, 256 memories per task,
memory strength 0.5; A-GEM lr 0.1, 25 memories per class, reference batch 256) trained through
``lifelong.engine.run`` on permuted MNIST as in the GEM paper (20 tasks, 1000 training images per
task, 1 epoch, batch size 10, MLP 784-100-100-10). Every ``observe`` call (one training step:
memory update, past-task / reference gradients, current gradient, projection, SGD step) is timed;
the table gives seconds per step while task ``t`` trains, i.e. with ``t`` past tasks.

Work per step: the MLP on the batch and on every memory example the step uses (GEM: ``256 t``;
A-GEM: ``min(256, memory)``). "Counted" FLOPs follow the usual convention, 3 x 2 x the
multiply-adds of the three linear layers (784*100 + 100*100 + 100*10 = 89,400 per example);
"executed" FLOPs leave out the first layer's input gradient, which is never computed (forward,
every weight gradient, the input gradients of layers 2 and 3: 379,600 per example, 0.71x). GFLOP/s
are executed FLOPs over the median and over the fastest step (the fastest is the estimate least
disturbed by other processes on a shared machine). GEM's QP, when a constraint is violated, adds a
float64 Gram matrix and products (``2 t^2 p + 4 t p``, ``p`` = 89,610 parameters), shown apart.
"Peak" is the best of ten float32 ``torch.mm`` of 2048x2048 matrices with the same threads.

Also timed, at the state the GEM run ends in and for each thread count of ``--compare-threads``:
GEM's past-task gradients computed by the method (``torch.func.vmap`` over tasks) against the
naive loop of one backward pass per past task (the official code's), alternating, with their
largest difference.

    python benchmarks/gem_speed.py                        # print the tables
    python benchmarks/gem_speed.py --threads 1 --record   # also write this section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from machine import busy_cpu_seconds, cpu_model

from lifelong.benchmarks import Stream, make_stream
from lifelong.engine import run
from lifelong.methods import gem as gem_module
from lifelong.methods import make_method
from lifelong.methods.gem import GEM
from lifelong.models import make_model

N_TASKS, TRAIN_PER_TASK, BATCH_SIZE, HIDDEN = 20, 1000, 10, (100, 100)
SHOWN = (0, 1, 2, 5, 10, 19)  # past tasks in the table of steps
COMPARED = (2, 5, 10, 19)  # past tasks in the comparison of batched and looped past gradients
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Speed: GEM and A-GEM training steps"


# ----------------------------------------------------------------------------- counting
def layer_sizes(stream: Stream) -> list[int]:
    return [math.prod(stream.input_shape), *HIDDEN, stream.n_units]


def macs_per_example(sizes: list[int]) -> int:
    return sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))


def n_parameters(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def counted_flops(examples: int, sizes: list[int]) -> float:
    """Forward + backward FLOPs by the usual convention: 3 x 2 x multiply-adds per example."""
    return 3 * 2 * macs_per_example(sizes) * examples


def executed_flops(examples: int, sizes: list[int]) -> float:
    """FLOPs the step runs: forward and weight gradients of every layer, input gradients of all
    layers but the first (the input needs none)."""
    macs = macs_per_example(sizes)
    return 2 * (macs + macs + macs - sizes[0] * sizes[1]) * examples


def qp_flops(t: int, p: int) -> float:
    """GEM's projection in float64: Gram matrix G G' (2 t^2 p), G g and v G (2 t p each)."""
    return 2 * t * t * p + 4 * t * p


def step_examples(method, t: int) -> int:
    """Examples one step of task ``t`` runs through the MLP: the batch, plus GEM's ``t`` memories or
    A-GEM's reference batch (its whole past memory while that holds at most 256 examples)."""
    stored = sum(int(method.written[k].sum()) for k in range(t))
    if isinstance(method, GEM):
        return BATCH_SIZE + stored
    return BATCH_SIZE + min(method.reference_batch_size, stored)


# ----------------------------------------------------------------------------- machine
def peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of ``torch.mm`` on two ``n x n`` matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------- timing
class Timers:
    """Wall time of every ``observe`` per task, and of GEM's past gradients and QP inside it."""

    def __init__(self) -> None:
        self.step: dict[int, list[float]] = defaultdict(list)
        self.past: dict[int, list[float]] = defaultdict(list)
        self.qp: dict[int, list[float]] = defaultdict(list)
        self.task = 0

    def wrap(self, function, store):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            store[self.task].append(time.perf_counter() - start)
            return out
        return timed


def timed_run(name: str, stream: Stream, seed: int):
    """One full run of ``name`` with official defaults; returns (Result, Timers, method)."""
    model = make_model("mlp", stream.input_shape, stream.n_units, hidden=HIDDEN, seed=seed)
    method = make_method(name, model, seed=seed)
    timers = Timers()
    observe = method.observe

    def timed_observe(x, y, task_id):
        timers.task = task_id
        start = time.perf_counter()
        loss = observe(x, y, task_id)
        timers.step[task_id].append(time.perf_counter() - start)
        return loss

    method.observe = timed_observe
    project = gem_module.project_to_cone
    if name == "gem":
        method.past_gradients = timers.wrap(method.past_gradients, timers.past)
        gem_module.project_to_cone = timers.wrap(project, timers.qp)
    try:
        result = run(method, stream, epochs=1, batch_size=BATCH_SIZE, seed=seed)
    finally:
        gem_module.project_to_cone = project
    return result, timers, method


def compare_past_gradients(trained: GEM, stream: Stream, t: int, repeats: int):
    """Seconds (median, min) of the batched and the looped past gradients with ``t`` past tasks."""
    method = GEM(trained.model, n_memories=trained.n_memories)
    method.memory_x = {k: trained.memory_x[k] for k in range(t + 1)}
    method.memory_y = {k: trained.memory_y[k] for k in range(t + 1)}
    method.written = {k: trained.written[k] for k in range(t + 1)}
    method.begin_task(stream[t])
    batched, loop = method.past_gradients_batched(), method.past_gradients_loop()
    difference = float((batched - loop).abs().max())
    times = {"batched": [], "loop": []}
    for _ in range(repeats):
        for kind, function in (("batched", method.past_gradients_batched),
                               ("loop", method.past_gradients_loop)):
            start = time.perf_counter()
            function()
            times[kind].append(time.perf_counter() - start)
    return ({k: (statistics.median(v), min(v)) for k, v in times.items()}, difference)


# ----------------------------------------------------------------------------- tables
def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def step_rows(name: str, timers: Timers, method, sizes: list[int], peak: float) -> list[list[str]]:
    rows = []
    p = n_parameters(sizes)
    for t in SHOWN:
        steps = timers.step[t]
        median, fastest = statistics.median(steps), min(steps)
        examples = step_examples(method, t)
        executed = executed_flops(examples, sizes)
        past = qp_ms = qp_share = qp_cost = "-"
        if name == "gem" and t > 0:
            past = f"{statistics.median(timers.past[t]) * 1e3:.2f}"
            qp_share = f"{len(timers.qp[t]) / len(steps):.0%}"
            qp_cost = f"{qp_flops(t, p) / 1e6:.1f}"
            if timers.qp[t]:
                qp_ms = f"{statistics.median(timers.qp[t]) * 1e3:.2f}"
        rows.append([name, str(t), str(examples), f"{counted_flops(examples, sizes) / 1e6:.1f}",
                     f"{executed / 1e6:.1f}", f"{median * 1e3:.2f}", f"{fastest * 1e3:.2f}",
                     f"{executed / median / 1e9:.1f}", f"{executed / fastest / 1e9:.1f}",
                     f"{executed / fastest / 1e9 / peak:.0%}", past, qp_ms, qp_share, qp_cost])
    return rows


def compare_rows(threads: int, comparisons, sizes: list[int], peak: float) -> list[list[str]]:
    rows = []
    for t, times, difference in comparisons:
        (loop_median, loop_min), (batched_median, batched_min) = times["loop"], times["batched"]
        executed = executed_flops(256 * t, sizes)
        rows.append([str(threads), str(t), f"{loop_median * 1e3:.2f}", f"{batched_median * 1e3:.2f}",
                     f"{loop_min * 1e3:.2f}", f"{batched_min * 1e3:.2f}",
                     f"{loop_median / batched_median:.2f}x", f"{loop_min / batched_min:.2f}x",
                     f"{executed / batched_min / 1e9:.1f}", f"{executed / batched_min / 1e9 / peak:.0%}",
                     f"{difference:.1e}"])
    return rows


def summary(runs, sizes: list[int], peak: float, comparison_rows: list[list[str]]) -> str:
    """Two sentences reading the tables: GEM's cost at the last task, A-GEM's, batched vs loop."""
    last = SHOWN[-1]
    _, gem_timers, gem = runs["gem"]
    _, agem_timers, agem = runs["agem"]
    step = min(gem_timers.step[last])
    executed = executed_flops(step_examples(gem, last), sizes)
    past = statistics.median(gem_timers.past[last]) / statistics.median(gem_timers.step[last])
    qp = sum(gem_timers.qp[last]) / sum(gem_timers.step[last])
    agem_step = min(agem_timers.step[last])
    speedups = ", ".join(f"{row[7]} with {row[0]} thread{'s' if row[0] != '1' else ''}"
                         for row in comparison_rows if row[1] == str(COMPARED[-1]))
    rate = executed / step / 1e9
    return (f"Reading: with t={last} past tasks a GEM step runs {executed / 1e6:.0f} MFLOP in "
            f"{step * 1e3:.1f} ms at best ({rate:.1f} GFLOP/s, {rate / peak:.0%} of the peak); the "
            f"past-task gradients take {past:.0%} of the median step and the QP {qp:.0%} of the task's "
            f"training time. A-GEM's step stays near {agem_step * 1e3:.1f} ms whatever t "
            f"({step / agem_step:.0f}x cheaper than GEM's at t={last}). Batched against looped past "
            f"gradients at t={COMPARED[-1]} (min over min): {speedups}.")


STEP_HEADER = ["method", "past tasks t", "examples / step", "MFLOP counted", "MFLOP executed",
               "step ms (median)", "step ms (min)", "GFLOP/s (median)", "GFLOP/s (min step)",
               "of peak (min step)", "past grads ms (median)", "QP ms (median)", "steps with QP",
               "QP MFLOP (fp64)"]
COMPARE_HEADER = ["threads", "past tasks t", "loop ms (median)", "batched ms (median)", "loop ms (min)",
                  "batched ms (min)", "speed-up (median)", "speed-up (min)", "GFLOP/s batched (min)",
                  "of peak", "max abs difference"]


def record(text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, via a temp file and rename."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    head, found, rest = old.partition(SECTION)
    tail = rest[rest.find("\n## "):] if found and "\n## " in rest else ""
    new = head.rstrip() + "\n\n" + text.rstrip() + "\n" + tail
    temp = RESULTS.with_suffix(".md.gem-tmp")
    temp.write_text(new)
    os.replace(temp, RESULTS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the timed runs (default: torch's)")
    parser.add_argument("--compare-threads", default="1,2",
                        help="thread counts of the batched-vs-loop comparison (default 1,2)")
    parser.add_argument("--repeats", type=int, default=20, help="timings of each past-gradient variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help=f"write this section of {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    compare_threads = [int(n) for n in args.compare_threads.split(",") if n.strip()]
    stream = make_stream("permuted-mnist", n_tasks=N_TASKS, train_per_task=TRAIN_PER_TASK, seed=args.seed)
    sizes = layer_sizes(stream)
    print(f"{stream.name}: {stream.n_tasks} tasks x {len(stream[0].y_train)} images; MLP "
          f"{'-'.join(map(str, sizes))} ({n_parameters(sizes)} parameters); torch {torch.__version__}, "
          f"{threads} threads, {os.cpu_count()} cores ({cpu_model()})", flush=True)

    machine_before, own_before = busy_cpu_seconds()
    wall_before = time.perf_counter()
    peaks = {}
    for n in sorted({threads, *compare_threads}):
        torch.set_num_threads(n)
        peaks[n] = peak_gflops()
        print(f"peak, {n} threads: {peaks[n]:.1f} GFLOP/s (float32 torch.mm 2048^3)", flush=True)
    torch.set_num_threads(threads)
    runs = {}
    for name in ("gem", "agem"):
        result, timers, method = timed_run(name, stream, args.seed)
        runs[name] = (result, timers, method)
        print(f"{name}: ACC {result.metrics['acc']:.3f} BWT {result.metrics['bwt']:+.3f}; training "
              f"{sum(result.train_seconds):.1f} s", flush=True)
    comparison_rows = []
    for n in compare_threads:
        torch.set_num_threads(n)
        comparisons = []
        for t in COMPARED:
            times, difference = compare_past_gradients(runs["gem"][2], stream, t, args.repeats)
            comparisons.append((t, times, difference))
            print(f"past gradients, {n} threads, t={t}: loop {times['loop'][0] * 1e3:.1f} ms, batched "
                  f"{times['batched'][0] * 1e3:.1f} ms (medians), max |difference| {difference:.1e}",
                  flush=True)
        comparison_rows += compare_rows(n, comparisons, sizes, peaks[n])
    torch.set_num_threads(threads)
    machine_after, own_after = busy_cpu_seconds()
    wall = time.perf_counter() - wall_before
    others = max(0.0, (machine_after - machine_before) - (own_after - own_before))

    rows = [row for name, (_, timers, method) in runs.items()
            for row in step_rows(name, timers, method, sizes, peaks[threads])]
    accuracy = "; ".join(f"{name} ACC {result.metrics['acc']:.3f}, BWT {result.metrics['bwt']:+.3f}, "
                         f"training {sum(result.train_seconds):.1f} s"
                         for name, (result, _, _) in runs.items())
    noise = (f"other processes used {others:.1f} CPU seconds during the {wall:.0f} s of timed work "
             f"({others / wall:.2f} of a core on average)")
    steps_table, compare_table = markdown(STEP_HEADER, rows), markdown(COMPARE_HEADER, comparison_rows)
    reading = summary(runs, sizes, peaks[threads], comparison_rows)
    peak_text = ", ".join(f"{peaks[n]:.1f} GFLOP/s with {n} thread{'s' if n > 1 else ''}" for n in peaks)
    print(f"\n{steps_table}\n\n{compare_table}\n\n{reading}\n\n{accuracy}\nnoise: {noise}")

    if args.record:
        command = " ".join(["python", "benchmarks/gem_speed.py", *sys.argv[1:]])
        record(f"""{SECTION}

Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} cores, {cpu_model()};
torch {torch.__version__}; Python {platform.python_version()}. Timed runs with {threads} intra-op
thread{'s' if threads > 1 else ''}. Peak (best float32 `torch.mm` of two 2048x2048 matrices): {peak_text}.

Command: `{command}`

`gem` and `agem` with the official defaults (GEM: lr 0.1, 256 memories per task, memory strength
0.5, eps 1e-3; A-GEM: lr 0.1, 25 memories per class, reference batch 256) on GEM's permuted MNIST
({N_TASKS} tasks, {TRAIN_PER_TASK} training images per task, 1 epoch, batch {BATCH_SIZE}, MLP
{'-'.join(map(str, sizes))}) through `lifelong.engine.run`. A step is one `observe` call (memory
update, past-task or reference gradients, minibatch gradient, projection, SGD step); times are
over the {TRAIN_PER_TASK // BATCH_SIZE} steps of the task trained with `t` past tasks. "MFLOP counted" is
3 x 2 x the multiply-adds of the three linear layers ({macs_per_example(sizes):,} per example) on
every example the step uses; "executed" leaves out the first layer's input gradient, which is
never computed (0.71x); GFLOP/s and "of peak" use executed FLOPs. The QP (float64 Gram matrix and
products over {n_parameters(sizes):,} parameters) runs only on steps with a violated constraint;
its FLOPs are not in the GFLOP/s.

{steps_table}

GEM's past-task gradients at the state the GEM run ends in: the method's `torch.func.vmap` over
tasks ("batched") against one backward pass per past task ("loop", as the official code),
alternating, {args.repeats} timings each, per thread count:

{compare_table}

{reading}

When other processes are busy (see "Noise"), timings with 2 threads on 2 cores suffer most: each
parallel kernel waits for its descheduled thread (docs/design.md, "Threads"), hence the slow
2-thread medians; the minima are the better estimate of an idle machine.

Results of the timed runs: {accuracy}.

Noise: {noise}.
""")
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
