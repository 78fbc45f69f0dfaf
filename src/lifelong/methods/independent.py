"""One network per task (GEM's "independent"; HAT's upper-bound style baseline).

Task ``t`` gets its own copy of the architecture, drawn fresh from ``seed + t`` (or, with
``init_from_previous``, started from task ``t-1``'s trained weights, GEM's ``--finetune yes``).
Nothing is shared, so nothing is forgotten; the cost is one network per task. Predictions need
the task id.
"""

from __future__ import annotations

import copy
from typing import Annotated

import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method
from lifelong.methods.optimizers import OptimizerName
from lifelong.methods.registry import METHODS
from lifelong.params import Positive


@METHODS.register("independent")
class Independent(Method):
    """A fresh network per task (no forgetting, linear growth in parameters)."""

    task_conditioned = True
    task_agnostic = False

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        init_from_previous: bool = False,
        optimizer: OptimizerName = "sgd",
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.optimizer_name = optimizer
        self.init_from_previous = init_from_previous
        self.nets: dict[int, nn.Module] = {}

    def net(self, task_id: int) -> nn.Module:
        """Task ``task_id``'s network, created (untrained, from ``seed + task_id``) on first use."""
        if task_id not in self.nets:
            network = copy.deepcopy(self.model)
            network.reset_parameters(self.seed + task_id)
            self.nets[task_id] = network
        return self.nets[task_id]

    def begin_task(self, task: Task) -> None:
        network = self.net(task.id)
        if self.init_from_previous and task.id > 0:
            network.load_state_dict(self.net(task.id - 1).state_dict())
        network.train()
        self.optimizer = self.make_optimizer(network.parameters())
        super().begin_task(task)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.nets[task_id](x), y)
        self.step(loss)
        return loss.detach()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("independent needs the task id to choose a network")
        return self.net(task_id)(x)

    def networks(self) -> list[nn.Module]:
        return list(self.nets.values()) or [self.model]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["nets"] = {t: net.state_dict() for t, net in self.nets.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.nets = {}
        for t, net_state in state["nets"].items():
            self.net(int(t)).load_state_dict(net_state)
        self.task_id = state["task_id"]
        if state["optimizer"] is not None:
            self.optimizer = self.make_optimizer(self.net(self.task_id).parameters())
            self.optimizer.load_state_dict(state["optimizer"])
