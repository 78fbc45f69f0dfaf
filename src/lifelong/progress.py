"""Progress display for runs: a rich bar per task on a terminal, one line per task elsewhere."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def chain(*callbacks):
    """One progress callback calling each of ``callbacks`` that is not None (None if none is)."""
    active = [c for c in callbacks if c is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def call_all(event: str, info: dict[str, Any]) -> None:
        for callback in active:
            callback(event, info)

    return call_all


def task_line(label: str, info: dict[str, Any]) -> str:
    accuracy = info["accuracy"][: info["task"] + 1]
    return (
        f"{label} task {info['task'] + 1}/{info['n_tasks']}: loss {info['loss']:.3f}, "
        f"mean acc so far {accuracy.mean():.3f} "
        f"(train {info['train_seconds']:.1f}s, eval {info['eval_seconds']:.1f}s)"
    )


@contextmanager
def run_progress(label: str, enabled: bool = True, stream: TextIO | None = None):
    """Yield an engine progress callback (or None when disabled).

    On a terminal: one bar per task, advancing with minibatches. Otherwise (logs, CI): one line
    per finished task, since a non-terminal bar only shows when it is done.
    """
    stream = stream or sys.stderr
    if not enabled:
        yield None
        return
    if not stream.isatty():
        def plain(event: str, info: dict[str, Any]) -> None:
            if event == "task_end":
                print(task_line(label, info), file=stream, flush=True)

        yield plain
        return
    console = Console(file=stream)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        current: dict[str, Any] = {}

        def rich_callback(event: str, info: dict[str, Any]) -> None:
            if event == "task_start":
                description = f"{label} task {info['task'] + 1}/{info['n_tasks']} {info['name']}"
                current["bar"] = bars.add_task(description, total=info["batches"])
            elif event == "batches":
                bars.advance(current["bar"], info["advance"])
            elif event == "task_end":
                bar = current.pop("bar")
                bars.update(bar, completed=bars.tasks[bar].total,
                            description=task_line(label, info))

        yield rich_callback
