"""The training and evaluation loop: tasks in order, every task evaluated after every task.

``run(method, stream)`` returns a `Result` holding the accuracy matrix ``R[i][j]`` (accuracy on
task ``j`` after training task ``i``), the macro-F1 matrix of the same predictions (over each task's
classes), the untrained accuracies ``b[j]`` (for FWT), per-task timings and steps, peak memory
and the method's memory. Data stays in memory as tensors and minibatches are tensor slices, so
the loop does no per-sample Python work.

Determinism: the batch order of task ``t``, epoch ``e`` comes from a generator seeded with
``(seed, t, e)`` and the global torch RNG (dropout) is re-seeded from ``(seed, t)`` before each
task, so a run resumed at any task boundary replays the uninterrupted run exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lifelong import memory
from lifelong.benchmarks.stream import Stream, mask_logits
from lifelong.methods.base import Method
from lifelong.metrics import macro_f1, summary
from lifelong.schedule import ValidationSchedule, restore, snapshot, validation_loss
from lifelong.seeding import mix_seed

ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class Result:
    """Everything one run measured. Matrices are ``(T, T)`` numpy arrays, NaN where not yet run."""

    accuracy_matrix: np.ndarray
    untrained_accuracy: np.ndarray
    task_names: list[str]
    scenario: str
    #: accuracy with the other evaluation: task-agnostic for task-incremental streams, task-aware
    #: for class-incremental ones (only for split streams and methods that allow both)
    other_accuracy_matrix: np.ndarray | None = None
    other_kind: str | None = None
    train_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    #: epochs each task trained for (fewer than asked when a validation schedule stopped early)
    epochs_run: list[int] = field(default_factory=list)
    #: optimisation steps (minibatches observed) of each task: ``train_seconds[t] / train_steps[t]``
    #: is the cost of one step (empty in results recorded before it existed)
    train_steps: list[int] = field(default_factory=list)
    untrained_eval_seconds: float = 0.0
    method_memory: list[dict[str, int]] = field(default_factory=list)
    #: the method's `report()` after each task (e.g. HAT's capacity and weight reuse)
    method_reports: list[dict[str, Any]] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    #: ``F[i, j]``: macro-F1 over task ``j``'s classes after training task ``i``, from the
    #: predictions ``accuracy_matrix`` scores (None in results recorded before it existed)
    f1_matrix: np.ndarray | None = None

    @property
    def tasks_done(self) -> int:
        return len(self.train_seconds)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.train_seconds) + sum(self.eval_seconds) + self.untrained_eval_seconds)

    @property
    def metrics(self) -> dict[str, float]:
        if self.tasks_done == 0:
            return {}
        out = summary(self.accuracy_matrix[: self.tasks_done], self.untrained_accuracy)
        if self.f1_matrix is not None:
            last = self.f1_matrix[self.tasks_done - 1, : self.tasks_done]
            if not np.isnan(last).any():
                out["macro_f1"] = float(np.mean(last))
        return out

    def to_dict(self) -> dict[str, Any]:
        def matrix(m: np.ndarray | None):
            return None if m is None else [[_float(v) for v in row] for row in m]

        out = {
            "scenario": self.scenario,
            "task_names": self.task_names,
            "accuracy_matrix": matrix(self.accuracy_matrix),
            **({} if self.f1_matrix is None else {"f1_matrix": matrix(self.f1_matrix)}),
            "untrained_accuracy": [_float(v) for v in self.untrained_accuracy],
            "metrics": self.metrics,
            "seconds": {
                "train": self.train_seconds,
                "eval": self.eval_seconds,
                "untrained_eval": self.untrained_eval_seconds,
                "total": self.total_seconds,
            },
            "train_loss": self.train_loss,
            "epochs_run": self.epochs_run,
            "train_steps": self.train_steps,
            "peak_memory_mb": self.peak_memory_mb,
            "method_memory": self.method_memory,
            "method_reports": self.method_reports,
        }
        if any("capacity" in report for report in self.method_reports):
            out["capacity"] = [report.get("capacity", {}) for report in self.method_reports]
        if self.other_accuracy_matrix is not None:
            out[f"accuracy_matrix_{self.other_kind}"] = matrix(self.other_accuracy_matrix)
            if self.tasks_done:
                last = self.other_accuracy_matrix[self.tasks_done - 1, : self.tasks_done]
                out["metrics"][f"acc_{self.other_kind}"] = float(np.mean(last))
        return out


    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Result:
        """The inverse of `to_dict` (``result.json`` or a checkpoint back into a `Result`)."""
        def matrix(rows) -> np.ndarray:
            return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)

        kind = next((key[len("accuracy_matrix_"):] for key in record
                     if key.startswith("accuracy_matrix_")), None)
        return cls(
            accuracy_matrix=matrix(record["accuracy_matrix"]),
            untrained_accuracy=matrix([record["untrained_accuracy"]])[0],
            task_names=list(record["task_names"]),
            scenario=record["scenario"],
            other_accuracy_matrix=matrix(record[f"accuracy_matrix_{kind}"]) if kind else None,
            other_kind=kind,
            train_seconds=list(record["seconds"]["train"]),
            eval_seconds=list(record["seconds"]["eval"]),
            train_loss=list(record["train_loss"]),
            epochs_run=list(record.get("epochs_run", [])),
            train_steps=list(record.get("train_steps", [])),
            untrained_eval_seconds=record["seconds"]["untrained_eval"],
            method_memory=list(record["method_memory"]),
            method_reports=list(record.get("method_reports", [])),
            peak_memory_mb=record["peak_memory_mb"],
            f1_matrix=matrix(record["f1_matrix"]) if record.get("f1_matrix") is not None else None,
        )


def _float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def other_kind(stream: Stream, method: Method) -> str | None:
    """The second evaluation a run records, if the stream and method allow one."""
    if not (stream.layout.disjoint and stream.n_tasks > 1 and method.task_agnostic):
        return None
    return {"task": "task_agnostic", "class": "task_aware"}.get(stream.scenario)


def run(
    method: Method,
    stream: Stream,
    epochs: int = 1,
    batch_size: int = 10,
    seed: int = 0,
    eval_batch_size: int = 1000,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    resume: Result | None = None,
    on_task_end: Callable[[int, Result], None] | None = None,
    schedule: ValidationSchedule | None = None,
) -> Result:
    """Train ``method`` on ``stream`` task after task, evaluating every task after each one.

    With a ``schedule`` each task holds out part of its training set and trains for at most
    ``epochs`` epochs with the HAT code's validation-driven lr decay and early stopping.

    ``resume`` continues a partial result (its method state already loaded into ``method``) from
    its first untrained task; ``on_task_end(t, result)`` is called after task ``t`` is evaluated
    (for checkpoints). ``progress(event, info)`` receives ``task_start``, ``batches`` and
    ``task_end`` events.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if stream.scenario == "class" and not method.task_agnostic:
        raise ValueError(
            f"{type(method).__name__} needs the task id at test time, which the class-incremental "
            "scenario does not give; use scenario=task"
        )
    n_tasks = stream.n_tasks
    kind = other_kind(stream, method)
    warm_up()
    method.to(device)
    memory.reset_peak()
    if resume is None:
        nan = np.full((n_tasks, n_tasks), np.nan)
        result = Result(
            accuracy_matrix=nan.copy(),
            untrained_accuracy=np.full(n_tasks, np.nan),
            task_names=[task.name for task in stream],
            scenario=stream.scenario,
            other_accuracy_matrix=nan.copy() if kind else None,
            other_kind=kind,
            f1_matrix=nan.copy(),
        )
        start = time.perf_counter()
        result.untrained_accuracy[:] = evaluate(method, stream, eval_batch_size, device)[0]
        result.untrained_eval_seconds = time.perf_counter() - start
    else:
        result = resume
        if result.f1_matrix is None:  # a checkpoint from before macro-F1: the rest gets it
            result.f1_matrix = np.full((n_tasks, n_tasks), np.nan)
    for task in stream.tasks[result.tasks_done:]:
        train_seconds, mean_loss, epochs_run, steps = train_task(
            method, stream, task.id, epochs, batch_size, seed, device, progress, schedule
        )
        start = time.perf_counter()
        scores = score(method, stream, eval_batch_size, device, kind)
        primary, other = scores.accuracy, scores.other
        eval_seconds = time.perf_counter() - start
        result.accuracy_matrix[task.id] = primary
        result.f1_matrix[task.id] = scores.macro_f1
        if other is not None:
            result.other_accuracy_matrix[task.id] = other
        result.train_seconds.append(train_seconds)
        result.eval_seconds.append(eval_seconds)
        result.train_loss.append(mean_loss)
        result.epochs_run.append(epochs_run)
        result.train_steps.append(steps)
        result.method_memory.append(method.memory())
        result.method_reports.append(method.report())
        result.peak_memory_mb = max(result.peak_memory_mb, memory.peak_mb())
        if progress:
            progress("task_end", {"task": task.id, "n_tasks": n_tasks, "loss": mean_loss,
                                  "accuracy": primary, "macro_f1": scores.macro_f1,
                                  "train_seconds": train_seconds, "eval_seconds": eval_seconds})
        if on_task_end:
            on_task_end(task.id, result)
    return result


_warm = False


def warm_up() -> None:
    """Pay torch's one-time lazy initialisation (autograd, optimizer code) before any timer runs.

    Without this the first task of the first run in a process looks a second slower than the rest.
    The global RNG is left as it was.
    """
    global _warm
    if _warm:
        return
    with torch.random.fork_rng(devices=[]):
        layer = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        loss = torch.nn.functional.cross_entropy(layer(torch.randn(3, 4)), torch.tensor([0, 1, 0]))
        loss.backward()
        optimizer.step()
    _warm = True


def train_task(
    method: Method,
    stream: Stream,
    task_id: int,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str | torch.device,
    progress: ProgressCallback | None,
    schedule: ValidationSchedule | None = None,
) -> tuple[float, float, int, int]:
    """Run the method's hooks over one task; returns (seconds, mean minibatch loss, epochs run,
    optimisation steps)."""
    task = stream[task_id]
    torch.manual_seed(mix_seed(seed, task_id))
    start = time.perf_counter()
    if schedule is not None:
        task, x_valid, y_valid = schedule.split(task, seed)
        x_valid, y_valid = x_valid.to(device), y_valid.to(device)
    method.set_training(True)
    method.begin_task(task)
    x, y, ids = method.training_data(task)
    x, y = x.to(device), y.to(device)
    per_sample_ids = isinstance(ids, torch.Tensor)
    if per_sample_ids:
        ids = ids.to(device)
    n_batches = -(-len(y) // batch_size)
    report_every = max(1, n_batches // 20)
    if progress:
        progress("task_start", {"task": task_id, "n_tasks": stream.n_tasks, "name": task.name,
                                "batches": n_batches * epochs})
    plateau = None if schedule is None else Plateau(schedule, method)
    total_loss = torch.zeros((), device=device)
    epochs_run = 0
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(mix_seed(seed, task_id, epoch))
        order = torch.randperm(len(y), generator=generator).to(device)
        method.begin_epoch(epoch, n_batches)
        for b, index in enumerate(order.split(batch_size)):
            batch_ids = ids[index] if per_sample_ids else ids
            total_loss += method.observe(x[index], y[index], batch_ids)
            if progress and (b + 1) % report_every == 0:
                progress("batches", {"task": task_id, "advance": report_every})
        epochs_run += 1
        if plateau is not None and plateau.stop(validation_loss(method, task, x_valid, y_valid)):
            break
    if plateau is not None:
        plateau.restore_best()
    method.end_task(task)
    seconds = time.perf_counter() - start
    return seconds, float(total_loss) / (n_batches * epochs_run), epochs_run, n_batches * epochs_run


class Plateau:
    """The HAT code's per-task loop state: best validation loss, its weights, patience and lr."""

    def __init__(self, schedule: ValidationSchedule, method: Method) -> None:
        self.schedule, self.method = schedule, method
        self.best_loss = float("inf")
        self.best_weights: list[torch.Tensor] | None = None
        self.patience = schedule.lr_patience
        self.scale = 1.0
        method.set_lr_scale(1.0)

    def stop(self, loss: float) -> bool:
        """Record an epoch's validation loss; True when the lr has decayed below ``lr_min``."""
        if loss < self.best_loss:
            self.best_loss, self.best_weights = loss, snapshot(self.method)
            self.patience = self.schedule.lr_patience
            return False
        self.patience -= 1
        if self.patience > 0:
            return False
        self.scale /= self.schedule.lr_factor
        if self.method.lr * self.scale < self.schedule.lr_min:
            return True
        self.patience = self.schedule.lr_patience
        self.method.set_lr_scale(self.scale)
        return False

    def restore_best(self) -> None:
        if self.best_weights is not None:
            restore(self.method, self.best_weights)
        self.method.set_lr_scale(1.0)


@dataclass
class Scores:
    """One evaluation of every task: accuracies (the scenario's own and optionally the other) and
    the macro-F1 of the scenario's own predictions, each ``(T,)`` with NaN for tasks not scored."""

    accuracy: np.ndarray
    other: np.ndarray | None
    macro_f1: np.ndarray


def evaluate(
    method: Method,
    stream: Stream,
    eval_batch_size: int = 1000,
    device: str | torch.device = "cpu",
    other: str | None = None,
    only: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Accuracy on every task's test set: the scenario's own evaluation, and optionally the other.

    Task- and domain-incremental streams give the task id (scored over the task's units);
    class-incremental streams give none (scored over all units). ``only`` restricts the
    evaluation to those task ids (the others are NaN). `score` also gives the macro-F1.
    """
    scores = score(method, stream, eval_batch_size, device, other, only)
    return scores.accuracy, scores.other


@torch.no_grad()
def score(
    method: Method,
    stream: Stream,
    eval_batch_size: int = 1000,
    device: str | torch.device = "cpu",
    other: str | None = None,
    only: Sequence[int] | None = None,
) -> Scores:
    """`evaluate`'s accuracies plus each task's macro-F1 over its classes (``task_units``).

    The macro-F1 scores the predictions the scenario's own accuracy counts (same masking): a
    confusion matrix over the task's ``k`` classes plus one bin for any other unit (a prediction
    outside the task's classes, possible without the task id, is a false negative) is accumulated
    on the device, one ``bincount`` per batch, and read once per task (`metrics.macro_f1`).
    """
    method.set_training(False)
    layout = stream.layout
    primary = np.full(stream.n_tasks, np.nan)
    f1 = np.full(stream.n_tasks, np.nan)
    secondary = np.full(stream.n_tasks, np.nan) if other else None
    need_aware = stream.scenario != "class" or other == "task_aware"
    need_agnostic = stream.scenario == "class" or other == "task_agnostic"
    for task in stream:
        if only is not None and task.id not in only:
            continue
        aware_mask, agnostic_mask = layout.eval_mask(task.id), layout.eval_mask(None)
        classes = layout.task_units[task.id]
        k = len(classes)
        local = torch.full((layout.n_units,), k, dtype=torch.long, device=device)
        local[torch.tensor(classes, dtype=torch.long, device=device)] = torch.arange(k, device=device)
        confusion = torch.zeros((k + 1) * (k + 1), dtype=torch.long, device=device)
        aware_correct = agnostic_correct = 0
        for start in range(0, len(task.y_test), eval_batch_size):
            x = task.x_test[start:start + eval_batch_size].to(device)
            y = task.y_test[start:start + eval_batch_size].to(device)
            shared = None if method.task_conditioned else method.predict(x, None)
            aware_pred = agnostic_pred = None
            if need_aware:
                logits = shared if shared is not None else method.predict(x, task.id)
                aware_pred = mask_logits(logits, aware_mask).argmax(1)
                aware_correct += int((aware_pred == y).sum())
            if need_agnostic:
                logits = shared if shared is not None else method.predict(x, None)
                agnostic_pred = mask_logits(logits, agnostic_mask).argmax(1)
                agnostic_correct += int((agnostic_pred == y).sum())
            pred = agnostic_pred if stream.scenario == "class" else aware_pred
            # a unit beyond the layout (a model with more outputs than the stream) counts as "other"
            pred_local = torch.where(pred < local.numel(), local[pred.clamp(max=local.numel() - 1)], k)
            confusion += torch.bincount(local[y] * (k + 1) + pred_local, minlength=(k + 1) ** 2)
        n = max(1, len(task.y_test))
        aware, agnostic = aware_correct / n, agnostic_correct / n
        primary[task.id] = agnostic if stream.scenario == "class" else aware
        f1[task.id] = macro_f1(confusion.view(k + 1, k + 1).cpu().numpy(), range(k))
        if secondary is not None:
            secondary[task.id] = aware if other == "task_aware" else agnostic
    return Scores(primary, secondary, f1)
