"""SGD-F (Serrà et al., 2018, "HAT", Sec. 4): learn the first task, then train only the head.

After the first task the body is frozen (no gradient, no updates) and later tasks train only the
output layer, which for task-incremental streams is their own head.
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method
from lifelong.methods.registry import METHODS
from lifelong.params import Positive


@METHODS.register("frozen")
class Frozen(Method):
    """SGD-F: train everything on task 0, afterwards only the output head."""

    def __init__(self, model: nn.Module, lr: Annotated[float, Positive] = 0.03, seed: int = 0) -> None:
        super().__init__(model, lr, seed)

    def begin_task(self, task: Task) -> None:
        if task.id > 0:
            self.freeze_body()
        super().begin_task(task)

    def freeze_body(self) -> None:
        for parameter in self.model.body.parameters():
            parameter.requires_grad_(False)
        self.optimizer = self.make_optimizer(self.model.head.parameters())

    def make_optimizer(self, parameters):
        trainable = [p for p in parameters if p.requires_grad]
        return super().make_optimizer(trainable)

    def load_state_dict(self, state) -> None:
        if state["task_id"] > 0:
            for parameter in self.model.body.parameters():
                parameter.requires_grad_(False)
        super().load_state_dict(state)
