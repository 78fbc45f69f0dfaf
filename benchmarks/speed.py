"""Speed of the library's training/evaluation loop against a minimal plain-PyTorch loop.

What it measures: ``finetune`` on the GEM permuted-MNIST protocol (20 tasks, 1000 training images
per task, 1 epoch, batch size 10, MLP 784-100-100-10, SGD lr 0.03, every task's test set evaluated
after every task), run once through the library (``make_stream`` / ``make_model`` /
``make_method`` / ``engine.run``) and once as a hand-written loop (``nn.CrossEntropyLoss``,
``torch.optim.SGD``, ``zero_grad/backward/step``, argmax in chunks of 1000 under ``no_grad``)
doing the same work: the same task tensors from the same stream object, the same initial weights
and the same per-task batch order. The two alternate (library, plain, library, plain, ...) so
machine noise hits both alike.

Timed separately, summed over the 20 tasks:

- train: the library's ``Result.train_seconds`` (begin_task .. end_task, batch order included);
  the plain loop's own timer around the same span;
- eval: the library's ``Result.untrained_eval_seconds`` plus ``eval_seconds`` (the evaluation
  before task 0 and after each task: 21 passes over every task's test set); the same span on the
  plain side;
- total: wall time of the whole run on each side (the library's per-task bookkeeping included),
  to catch overhead outside the two timers.

Both sides must end with the same accuracy matrix (and untrained accuracies); the script checks
that they are bit-for-bit equal and says so.

    python benchmarks/speed.py                 # print the table
    python benchmarks/speed.py --record        # also rewrite benchmarks/RESULTS.md
    python benchmarks/speed.py --synthetic     # random images (no MNIST needed), for development
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from machine import busy_cpu_seconds, cpu_model
from torch import nn

from lifelong.benchmarks import Stream, build_stream, make_stream
from lifelong.engine import mix_seed, run
from lifelong.methods import make_method
from lifelong.models import make_model

N_TASKS, TRAIN_PER_TASK, EPOCHS, BATCH_SIZE, EVAL_BATCH_SIZE, LR = 20, 1000, 1, 10, 1000, 0.03
HIDDEN = (100, 100)
TARGET = 1.2  # library time / plain time, for training and evaluation each
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Speed: finetune on GEM permuted MNIST"


@dataclass
class Timing:
    """Seconds of one run of either side, and what it computed."""

    train: float
    eval: float
    total: float
    accuracy: np.ndarray  # (T, T): accuracy on task j after training task i
    untrained: np.ndarray  # (T,)


def synthetic_stream(test_per_task: int, seed: int) -> Stream:
    """Permuted-MNIST-shaped stream of random images in [0, 1] with random labels 0..9."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for t in range(N_TASKS):
        def images(n: int) -> torch.Tensor:
            return torch.randint(0, 256, (n, 1, 28, 28), generator=generator).float().div_(255)

        def labels(n: int) -> torch.Tensor:
            return torch.randint(0, 10, (n,), generator=generator)

        parts.append((f"random-{t}", images(TRAIN_PER_TASK), labels(TRAIN_PER_TASK),
                      images(test_per_task), labels(test_per_task)))
    return build_stream("synthetic", "domain", parts, (1, 28, 28))


def library_run(stream: Stream, seed: int) -> Timing:
    """The library's own path: make_model / make_method / engine.run."""
    model = make_model("mlp", stream.input_shape, stream.n_units, hidden=HIDDEN, seed=seed)
    method = make_method("finetune", model, seed=seed, lr=LR)
    start = time.perf_counter()
    result = run(method, stream, epochs=EPOCHS, batch_size=BATCH_SIZE, seed=seed,
                 eval_batch_size=EVAL_BATCH_SIZE)
    total = time.perf_counter() - start
    evaluation = result.untrained_eval_seconds + sum(result.eval_seconds)
    return Timing(sum(result.train_seconds), evaluation, total, result.accuracy_matrix,
                  result.untrained_accuracy)


def plain_model(stream: Stream, seed: int) -> nn.Sequential:
    """784-100-100-10 with ReLU, starting from the library model's initial weights (same seed)."""
    n_inputs, (h1, h2) = int(np.prod(stream.input_shape)), HIDDEN
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_inputs, h1), nn.ReLU(), nn.Linear(h1, h2),
                          nn.ReLU(), nn.Linear(h2, stream.n_units))
    reference = make_model("mlp", stream.input_shape, stream.n_units, hidden=HIDDEN, seed=seed)
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
            mine.copy_(theirs)
    return model


@torch.no_grad()
def plain_evaluate(model: nn.Module, stream: Stream) -> np.ndarray:
    model.eval()
    accuracy = np.zeros(stream.n_tasks)
    for task in stream:
        correct = 0
        for start in range(0, len(task.y_test), EVAL_BATCH_SIZE):
            x = task.x_test[start:start + EVAL_BATCH_SIZE]
            y = task.y_test[start:start + EVAL_BATCH_SIZE]
            correct += int((model(x).argmax(1) == y).sum())
        accuracy[task.id] = correct / len(task.y_test)
    return accuracy


def plain_run(stream: Stream, seed: int) -> Timing:
    """A minimal hand-written loop doing the same work as ``library_run``."""
    model = plain_model(stream, seed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    accuracy = np.full((stream.n_tasks, stream.n_tasks), np.nan)
    train = 0.0
    start_run = time.perf_counter()
    untrained = plain_evaluate(model, stream)
    evaluation = time.perf_counter() - start_run
    for task in stream:
        start = time.perf_counter()
        model.train()
        for epoch in range(EPOCHS):
            generator = torch.Generator().manual_seed(mix_seed(seed, task.id, epoch))
            order = torch.randperm(len(task.y_train), generator=generator)
            for index in order.split(BATCH_SIZE):
                optimizer.zero_grad()
                loss = criterion(model(task.x_train[index]), task.y_train[index])
                loss.backward()
                optimizer.step()
        train += time.perf_counter() - start
        start = time.perf_counter()
        accuracy[task.id] = plain_evaluate(model, stream)
        evaluation += time.perf_counter() - start
    return Timing(train, evaluation, time.perf_counter() - start_run, accuracy, untrained)


def seconds(timings: list[Timing], phase: str) -> list[float]:
    return [getattr(t, phase) for t in timings]


def table(library: list[Timing], plain: list[Timing]) -> list[list[str]]:
    """Rows of (phase, library median/min, plain median/min, ratio of medians, ratio of mins)."""
    rows = []
    for phase in ("train", "eval", "total"):
        lib, base = seconds(library, phase), seconds(plain, phase)
        rows.append([phase, f"{statistics.median(lib):.3f}", f"{min(lib):.3f}",
                     f"{statistics.median(base):.3f}", f"{min(base):.3f}",
                     f"{statistics.median(lib) / statistics.median(base):.2f}x",
                     f"{min(lib) / min(base):.2f}x"])
    return rows


def verdict(library: list[Timing], plain: list[Timing]) -> str:
    """PASS when the ratio of median times is within TARGET for training and for evaluation."""
    ratios = {phase: statistics.median(seconds(library, phase))
              / statistics.median(seconds(plain, phase)) for phase in ("train", "eval")}
    passed = all(ratio <= TARGET for ratio in ratios.values())
    return (f"{'PASS' if passed else 'FAIL'}: library/plain (medians) train {ratios['train']:.2f}x, "
            f"eval {ratios['eval']:.2f}x; target: each within {TARGET}x")


def spread(library: list[Timing], plain: list[Timing]) -> str:
    """Slowest over fastest run per side and phase: near 1 on a quiet machine."""
    parts = []
    for side, timings in (("library", library), ("plain", plain)):
        for phase in ("train", "eval"):
            values = seconds(timings, phase)
            parts.append(f"{side} {phase} {max(values) / min(values):.2f}")
    return ", ".join(parts)


HEADER = ["phase", "library median s", "library min s", "plain median s", "plain min s",
          "ratio (median)", "ratio (min)"]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def same_results(library: list[Timing], plain: list[Timing]) -> str:
    """Whether every run on both sides gave the identical accuracy matrix and untrained accuracies."""
    first = library[0]
    for timing in library + plain:
        if not (np.array_equal(timing.accuracy, first.accuracy)
                and np.array_equal(timing.untrained, first.untrained)):
            diff = np.nanmax(np.abs(timing.accuracy - first.accuracy))
            return f"NO: accuracy matrices differ (max |difference| {diff:.4g})"
    final = first.accuracy[-1]
    return (f"yes: all {len(library)} library and {len(plain)} plain runs give the bit-identical "
            f"{first.accuracy.shape[0]}x{first.accuracy.shape[1]} accuracy matrix and untrained "
            f"accuracies (final average accuracy {final.mean():.4f})")


def record(text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, via a temp file and rename."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    head, _, rest = old.partition(SECTION)
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    new = head.rstrip() + "\n\n" + text.rstrip() + "\n" + (tail if tail else "")
    temp = RESULTS.with_suffix(".md.tmp")
    temp.write_text(new)
    os.replace(temp, RESULTS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of each side first (default 1)")
    parser.add_argument("--test-per-task", type=int, default=10000,
                        help="test images per task (default 10000, GEM's whole test set)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true",
                        help="random images instead of MNIST (development only; never recorded)")
    parser.add_argument("--record", action="store_true", help=f"rewrite the section of {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.record and args.synthetic:
        parser.error("--record needs the real permuted-MNIST stream; drop --synthetic")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    if args.synthetic:
        stream = synthetic_stream(args.test_per_task, args.seed)
    else:
        stream = make_stream("permuted-mnist", n_tasks=N_TASKS, train_per_task=TRAIN_PER_TASK,
                             test_per_task=args.test_per_task, seed=args.seed)
    print(f"{stream.name}: {stream.n_tasks} tasks, {len(stream[0].y_train)} train / "
          f"{len(stream[0].y_test)} test per task; torch {torch.__version__}, {threads} threads, "
          f"{os.cpu_count()} cores ({cpu_model()})")

    for _ in range(args.warmup):  # first-call costs (allocator, kernels) hit neither side's numbers
        library_run(stream, args.seed)
        plain_run(stream, args.seed)
    library: list[Timing] = []
    plain: list[Timing] = []
    machine_before, own_before = busy_cpu_seconds()
    wall_before = time.perf_counter()
    for repeat in range(args.repeats):
        library.append(library_run(stream, args.seed))
        plain.append(plain_run(stream, args.seed))
        print(f"repeat {repeat + 1}/{args.repeats}: "
              f"library train {library[-1].train:.3f}s eval {library[-1].eval:.3f}s | "
              f"plain train {plain[-1].train:.3f}s eval {plain[-1].eval:.3f}s", flush=True)

    machine_after, own_after = busy_cpu_seconds()
    others = (machine_after - machine_before) - (own_after - own_before)
    wall = time.perf_counter() - wall_before
    rows = table(library, plain)
    identical = same_results(library, plain)
    verdict_text = verdict(library, plain)
    noise = (f"other processes used {max(others, 0.0):.1f} CPU seconds during the "
             f"{wall:.0f} s of timed runs; slowest/fastest run: {spread(library, plain)}")
    print()
    print(markdown(rows))
    print(f"\nsame results: {identical}\nnoise: {noise}\n{verdict_text}")

    if args.record:
        command = " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]])
        record(f"""{SECTION}

Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} cores, {cpu_model()};
torch {torch.__version__}, {threads} intra-op threads; Python {platform.python_version()}.

Command: `{command}`

`finetune` on GEM permuted MNIST ({N_TASKS} tasks, {TRAIN_PER_TASK} training images per task,
{EPOCHS} epoch, batch size {BATCH_SIZE}, MLP 784-100-100-10, SGD lr {LR}; after every task every
task's {args.test_per_task} test images are evaluated in chunks of {EVAL_BATCH_SIZE}) through
`lifelong.engine.run`, against a minimal plain-PyTorch loop on the same tensors, initial weights
and batch order, alternating, {args.repeats} timed runs each after {args.warmup} untimed. Seconds
are summed over the {N_TASKS} tasks; "eval" includes the untrained evaluation before task 0 on
both sides; "total" is the wall time of a whole run.

{markdown(rows)}

Same results: {identical}.

Noise: {noise}.

Target: library within {TARGET}x of plain PyTorch, training and evaluation each (ratio of medians).
Verdict: **{verdict_text}**.
""")
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
