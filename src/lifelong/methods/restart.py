"""SGD-R (Serrà et al., 2018, "HAT", Sec. 4): re-initialise the network before every task.

Each task is learnt from scratch by the one network, so only the last task is remembered; the
model is re-drawn from ``seed + task id``.
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method
from lifelong.methods.registry import METHODS
from lifelong.params import Positive


@METHODS.register("restart")
class Restart(Method):
    """SGD-R: re-initialise the whole network before each task after the first."""

    def __init__(self, model: nn.Module, lr: Annotated[float, Positive] = 0.03, seed: int = 0) -> None:
        super().__init__(model, lr, seed)

    def begin_task(self, task: Task) -> None:
        if task.id > 0:
            self.model.reset_parameters(self.seed + task.id)
            self.optimizer = None
        super().begin_task(task)
