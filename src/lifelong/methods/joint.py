"""Joint (multitask) training: after each task, the model has been trained on all tasks so far.

The upper bound of the HAT and GEM papers. While task ``t`` is learnt, the engine's minibatches
are drawn from the union of tasks ``0..t`` (each example scored over its own task's units in
task-incremental streams), for the same number of epochs. ``from_scratch`` re-initialises the
network before each task, so each row of the accuracy matrix is a genuine multitask model;
otherwise training continues from the previous joint model (cheaper, and as good in practice).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.optimizers import OptimizerName
from lifelong.methods.registry import METHODS
from lifelong.params import Positive


@METHODS.register("joint")
class Joint(Method):
    """Multitask training on the union of all tasks so far (upper bound)."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        from_scratch: bool = False,
        optimizer: OptimizerName = "sgd",
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.optimizer_name = optimizer
        self.from_scratch = from_scratch
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def begin_task(self, task: Task) -> None:
        if self.from_scratch and task.id > 0:
            self.model.reset_parameters(self.seed + task.id)
            self.optimizer = None
        super().begin_task(task)
        self.seen[task.id] = (task.x_train, task.y_train)
        # row t: the units an example of task t is scored over (tasks arrive in order: seen = 0..t)
        self.sample_masks = task.layout.replay_masks(task.id)

    def training_data(self, task: Task):
        x = torch.cat([x for x, _ in self.seen.values()])
        y = torch.cat([y for _, y in self.seen.values()])
        ids = torch.cat([torch.full((len(y),), i) for i, (_, y) in enumerate(self.seen.values())])
        return x, y, ids

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        mask = None if self.sample_masks is None else self.sample_masks[task_id]
        loss = self.loss(self.model(x), y, mask=mask)
        self.step(loss)
        return loss.detach()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seen": dict(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.seen = dict(state["seen"])

    def memory(self) -> dict[str, int]:
        stored = [tensor for pair in self.seen.values() for tensor in pair]
        return {**super().memory(), "stored_examples": sum(len(y) for _, y in self.seen.values()),
                "stored_bytes": tensor_bytes(*stored)}
