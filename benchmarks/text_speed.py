"""Speed of a frozen text encoder with and without the feature cache (``transformer`` model).

What it measures: ``finetune`` (its default lr) on the first 2 tasks of ``20news`` (CTR's pairs
of newsgroups, task-incremental), 200 training documents per task, the tasks' whole test sets
(``--test-per-task`` caps them), token ids of ``max_length`` 64, on
``make_model("transformer", freeze=True)`` (all-MiniLM-L6-v2, mean pooling, no hidden layer):
3 epochs per task, batch size 32, every task evaluated before training and after each task,
run through ``engine.run`` once with ``feature_cache=True`` and once with ``feature_cache=False``
(same seeds, same stream object).

Without the cache every batch of every epoch and every evaluation runs MiniLM; with it each
distinct document is encoded once (the first epoch of its task, or the evaluation before
training) and looked up afterwards. Timed separately:

- train: the sum of ``Result.train_seconds`` (begin_task .. end_task of both tasks);
- eval: ``Result.untrained_eval_seconds`` plus the sum of ``eval_seconds`` (3 evaluations of both
  test sets);
- total: wall time of ``engine.run``.

Both runs must give the same accuracy matrix and training losses (the cache is exact); the
script checks that they are bit-for-bit equal and says so, and reports the cache's rows, bytes,
hits and misses. Results are printed, not recorded.

    python benchmarks/text_speed.py                     # 1 thread, whole test sets
    python benchmarks/text_speed.py --test-per-task 200 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from machine import busy_cpu_seconds, cpu_model

from lifelong.benchmarks import Stream, make_stream
from lifelong.engine import Result, run
from lifelong.methods import make_method
from lifelong.models import make_model

N_TASKS, TRAIN_PER_TASK, MAX_LENGTH, EPOCHS, BATCH_SIZE = 2, 200, 64, 3, 32


def timed_run(stream: Stream, feature_cache: bool, seed: int, eval_batch_size: int
              ) -> tuple[Result, float, dict[str, int]]:
    """``finetune`` on ``stream``: its result, the wall seconds of ``engine.run``, the cache's info."""
    model = make_model("transformer", stream.input_shape, stream.n_units, seed=seed, freeze=True,
                       feature_cache=feature_cache)
    method = make_method("finetune", model, seed=seed)
    start = time.perf_counter()
    result = run(method, stream, epochs=EPOCHS, batch_size=BATCH_SIZE, seed=seed,
                 eval_batch_size=eval_batch_size)
    return result, time.perf_counter() - start, model.feature_cache_info()


def phases(result: Result, wall: float) -> dict[str, float]:
    return {"train": float(sum(result.train_seconds)),
            "eval": float(result.untrained_eval_seconds + sum(result.eval_seconds)),
            "total": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-per-task", type=int, default=None,
                        help="test documents per task (default: the whole test set, ~780)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stream = make_stream("20news", train_per_task=TRAIN_PER_TASK, test_per_task=args.test_per_task,
                         max_length=MAX_LENGTH, seed=args.seed).first(N_TASKS)
    n_train = sum(len(task.y_train) for task in stream)
    n_test = sum(len(task.y_test) for task in stream)
    print(f"20news, first {stream.n_tasks} tasks: {n_train} train / {n_test} test documents, "
          f"max_length {MAX_LENGTH}; finetune, {EPOCHS} epochs, batch size {BATCH_SIZE}; "
          f"MiniLM-L6 frozen; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores ({cpu_model()})")
    make_model("transformer", stream.input_shape, stream.n_units)  # untimed: first load of MiniLM
    runs = {}
    machine_before, own_before = busy_cpu_seconds()
    wall_before = time.perf_counter()
    for feature_cache in (False, True):
        result, wall, info = timed_run(stream, feature_cache, args.seed, args.eval_batch_size)
        runs[feature_cache] = (result, phases(result, wall), info)
        print(f"  feature_cache={feature_cache}: {wall:.1f} s")
    machine_after, own_after = busy_cpu_seconds()
    wall = time.perf_counter() - wall_before
    other = (machine_after - machine_before) - (own_after - own_before)
    (plain, plain_s, _), (cached, cached_s, info) = runs[False], runs[True]
    print()
    print("| phase | no cache s | cache s | speed-up |")
    print("|---|---|---|---|")
    for phase in ("train", "eval", "total"):
        print(f"| {phase} | {plain_s[phase]:.1f} | {cached_s[phase]:.1f} | "
              f"{plain_s[phase] / cached_s[phase]:.1f}x |")
    print()
    rows_plain = EPOCHS * n_train + (stream.n_tasks + 1) * n_test
    print(f"encoder rows: {rows_plain} without the cache (every batch, every evaluation); "
          f"{info['misses']} with it ({info['rows']} cached, {info['hits']} hits, "
          f"{info['bytes'] / 2**20:.1f} MiB on the device, limit {info['limit']} rows, "
          f"overflow {info['overflow']})")
    same = (np.array_equal(plain.accuracy_matrix, cached.accuracy_matrix, equal_nan=True)
            and np.array_equal(plain.untrained_accuracy, cached.untrained_accuracy)
            and plain.train_loss == cached.train_loss)
    final = np.asarray(cached.accuracy_matrix)[-1]
    print(f"same results: {'yes' if same else 'NO'} (accuracy matrices, untrained accuracies and "
          f"training losses bit-identical; final average accuracy {np.nanmean(final):.4f})")
    print(f"machine: other processes used {other / wall:.2f} cores on average during the runs")


if __name__ == "__main__":
    main()
