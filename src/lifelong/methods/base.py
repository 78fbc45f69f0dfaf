"""The `Method` interface every continual-learning method implements.

A method owns its network(s) and optimizer and sees data only through these hooks, called by
`lifelong.engine.run` for each task of a stream in order:

- ``begin_task(task)`` before the task's first batch;
- ``training_data(task)`` the tensors the engine batches for this task (the task's own by default);
- ``begin_epoch(epoch, n_batches)`` before each pass over them (for schedules within an epoch);
- ``observe(x, y, task_id) -> loss`` one optimisation step on a minibatch (labels are output units);
- ``end_task(task)`` after its last batch;
- ``predict(x, task_id) -> logits`` over all output units (the engine masks them by scenario);
- ``state_dict()`` / ``load_state_dict()`` everything the method remembers, for checkpoints;
- ``memory()`` what it stores, in counts and bytes;
- ``report()`` anything else worth recording after a task (JSON values, e.g. HAT's capacity).

Under a validation schedule (`lifelong.schedule`) the engine also calls ``set_lr_scale(scale)``
to decay the learning rate and snapshots / restores ``weights()`` at the best epoch.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import HeadLayout, Task, mask_logits
from lifelong.methods.optimizers import build_optimizer
from lifelong.params import Positive


class Method:
    """Base class: plain SGD on the current task's loss (subclasses override what differs).

    Subclasses keep the constructor to storing arguments (scikit-learn style); the optimizer and
    any per-run state are built in ``begin_task``.
    """

    #: whether ``predict`` depends on ``task_id`` (if not, one forward serves both evaluations)
    task_conditioned: bool = False
    #: whether the method can predict without a task id (class-incremental scoring)
    task_agnostic: bool = True
    #: the model the method is built for (``"transformer"``: plugins inside a BERT), None for any
    requires_model: str | None = None
    #: what `make_optimizer` builds (`lifelong.methods.optimizers`); methods with an ``optimizer``
    #: parameter store it here
    optimizer_name: str = "sgd"

    def __init__(self, model: nn.Module, lr: Annotated[float, Positive] = 0.03, seed: int = 0) -> None:
        self.model = model
        self.lr = lr
        self.seed = seed
        self.optimizer: torch.optim.Optimizer | None = None
        self.layout: HeadLayout | None = None
        self.train_mask: torch.Tensor | None = None
        self.task_id = -1

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        self.layout = task.layout
        self.task_id = task.id
        self.train_mask = task.train_mask
        if self.optimizer is None:
            self.optimizer = self.make_optimizer(self.model.parameters())

    def training_data(self, task: Task) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """``(x, y, task_ids)`` the engine draws this task's minibatches from."""
        return task.x_train, task.y_train, task.id

    def begin_epoch(self, epoch: int, n_batches: int) -> None:
        """Called before each epoch of the current task, with the number of minibatches it has."""

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        loss = self.loss(self.model(x, task_id), y)
        self.step(loss)
        return loss.detach()

    def end_task(self, task: Task) -> None:
        pass

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.model(x, task_id)

    # ----------------------------------------------------------------------------- helpers
    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_name, parameters, self.lr)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, mask=None) -> torch.Tensor:
        """Cross-entropy over the units the current task trains (``mask`` overrides)."""
        return F.cross_entropy(mask_logits(logits, self.train_mask if mask is None else mask), y)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def networks(self) -> list[nn.Module]:
        """Every module the method trains or keeps (for train/eval mode, devices and memory)."""
        return [self.model]

    def weights(self) -> list[torch.Tensor]:
        """Every tensor training a task changes (the parameters and buffers of `networks`).

        A validation schedule remembers these at the best epoch and restores them at the end.
        """
        tensors = {}
        for network in self.networks():
            for tensor in (*network.parameters(), *network.buffers()):
                tensors.setdefault(id(tensor), tensor)
        return list(tensors.values())

    def validation_penalty(self) -> float:
        """Added to the cross-entropy a validation schedule judges epochs by (none by default)."""
        return 0.0

    def set_lr_scale(self, scale: float) -> None:
        """Train on at ``scale`` times the optimizer's own learning rates (a schedule's decay)."""
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * scale

    def set_training(self, mode: bool) -> None:
        for network in self.networks():
            network.train(mode)

    def to(self, device: torch.device | str) -> Method:
        for network in self.networks():
            network.to(device)
        return self

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "task_id": self.task_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.task_id = state["task_id"]
        if state["optimizer"] is not None:
            self.optimizer = self.make_optimizer(self.model.parameters())
            self.optimizer.load_state_dict(state["optimizer"])

    def memory(self) -> dict[str, int]:
        """What the method holds: parameter count and bytes, plus any stored examples/vectors."""
        tensors = {id(p): p for net in self.networks() for p in net.parameters()}
        return {
            "parameters": sum(p.numel() for p in tensors.values()),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in tensors.values()),
        }

    def report(self) -> dict[str, Any]:
        """JSON-serialisable facts recorded after each task (none by default)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr})"


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def flat_gradient(parameters: list[torch.Tensor]) -> torch.Tensor:
    """The gradients of ``parameters`` as one vector (zeros where a parameter has none)."""
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in parameters])


def write_flat_gradient(parameters: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Set each parameter's gradient to its slice of ``flat`` (the inverse of `flat_gradient`)."""
    offset = 0
    for p in parameters:
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype, copy=True)
        offset += p.numel()
