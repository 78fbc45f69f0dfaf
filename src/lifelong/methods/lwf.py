"""Learning without Forgetting (LwF): Li and Hoiem, ECCV 2016 / TPAMI 2017, "Learning without
Forgetting" (arXiv:1606.09282).

After each task a frozen copy of the network is kept (the paper records the old network's
responses ``y_o`` on the new task's images before training, which is the same thing). While task
``t`` trains, the loss is

    L_new(y_n, ŷ_n) + λ_o · Σ_groups L_old(y_o, ŷ_o)

with ``L_new`` the cross-entropy over the units the task trains and, for each group of old output
units, the paper's modified cross-entropy (Eq. 2)

    L_old(y_o, ŷ_o) = -Σ_i y'_o(i) log ŷ'_o(i),   y'_o(i) = y_o(i)^(1/T) / Σ_j y_o(j)^(1/T)

where ``y_o`` are the old network's softmax probabilities over the group's units and ``ŷ_o`` the
current network's (``ŷ'_o`` tempered the same way), averaged over the minibatch. Tempering a
softmax by ``1/T`` is a softmax of the logits divided by ``T``, which is how `distillation_loss`
computes it. The groups of old units, per scenario (`HeadLayout`):

- task-incremental (multi-head): one group per old task, its own head's units (the paper's
  multiple old tasks, one ``L_old`` each, summed);
- domain-incremental (one shared head): one group, the shared head;
- class-incremental: one group, the units of all old tasks together.

Warm-up (the paper's Sec. 3, "warm-up step"): before joint training, the shared layers and the
old tasks' units are frozen and only the new task's output units are trained on the new task's
loss. Here the body is frozen, so its features of the task's training set are computed once (in
eval mode) and ``warmup_steps`` full-batch gradient steps at ``lr`` train the head rows of the
units that no earlier task used. The paper trains this step "to convergence" without a step count;
100 steps is this library's choice. A domain-incremental task brings no new units, so it has no
warm-up; ``warmup_steps=0`` switches it off.

Defaults: ``T=2`` and ``lamb=1`` (the paper's ``λ_o``), warm-up on (the paper). The learning rate
0.05 is the HAT code's (joansj/hat, src/approaches/lwf.py), whose LwF differs from the paper: it
uses ``lamb=2`` and ``T=1`` (the best of its grid searches over [0.1, 0.5, 1, 2, 4, 8, 10] and
[0.5, 1, 2, 4]), has no warm-up (a TODO notes the paper reports it helps, "but negligible"),
smooths the current probabilities with ``1e-5 / n_units`` before the log, and clips gradients at
norm 100. Like HAT's code (and unlike the paper) there is no weight decay term.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import HeadLayout, Task
from lifelong.methods.previous_model import PreviousModelMethod
from lifelong.methods.registry import METHODS
from lifelong.params import NonNegative, Positive

#: examples whose features are computed at once for the warm-up
FEATURE_CHUNK = 1024


def distillation_loss(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 2: ``-Σ_i y'_o(i) log ŷ'_o(i)`` averaged over rows, ``y'`` the tempered old softmax."""
    targets = F.softmax(old_logits / temperature, dim=1)
    return -(targets * F.log_softmax(logits / temperature, dim=1)).sum(1).mean()


def old_unit_groups(layout: HeadLayout, task_id: int) -> list[torch.Tensor]:
    """The groups of old output units distilled while task ``task_id`` trains (see the docstring)."""
    if task_id == 0:
        return []
    old = [tuple(layout.task_units[t]) for t in range(task_id)]
    if layout.scenario == "class":
        return [torch.tensor(sorted({u for units in old for u in units}), dtype=torch.long)]
    groups = list(dict.fromkeys(old))  # each distinct head once (domain: the one shared head)
    return [torch.tensor(units, dtype=torch.long) for units in groups]


def new_units(layout: HeadLayout, task_id: int) -> torch.Tensor:
    """Units of task ``task_id`` that no earlier task used (its new head; none in the domain case)."""
    seen = {u for t in range(task_id) for u in layout.task_units[t]}
    return torch.tensor([u for u in layout.task_units[task_id] if u not in seen], dtype=torch.long)


@METHODS.register("lwf")
class LwF(PreviousModelMethod):
    """Learning without Forgetting: distil the previous network's outputs on the new task's data."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.05,
        lamb: Annotated[float, NonNegative] = 1.0,
        T: Annotated[float, Positive] = 2.0,
        warmup_steps: Annotated[int, NonNegative] = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.lamb = lamb
        self.T = T
        self.warmup_steps = warmup_steps
        self.old_model: nn.Module | None = None
        self.groups: list[torch.Tensor] = []

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if self.T <= 0:
            raise ValueError(f"T={self.T} must be positive")
        if self.lamb < 0:
            raise ValueError(f"lamb={self.lamb} must be non-negative")
        super().begin_task(task)
        device = next(self.model.parameters()).device
        self.groups = [group.to(device) for group in old_unit_groups(task.layout, task.id)]
        if self.old_model is not None and self.warmup_steps > 0:
            self.warm_up(task, new_units(task.layout, task.id).to(device))

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        loss = self.loss(logits, y)
        if self.old_model is not None and self.groups and self.lamb > 0:
            with torch.no_grad():
                old_logits = self.old_model(x)
            for units in self.groups:
                loss = loss + self.lamb * distillation_loss(logits[:, units], old_logits[:, units], self.T)
        self.step(loss)
        return loss.detach()

    @torch.no_grad()
    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """The (frozen) body's features of ``x``, in eval mode, chunk by chunk."""
        training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        out = torch.cat([self.model.features(chunk.to(device)) for chunk in x.split(FEATURE_CHUNK)])
        self.model.train(training)
        return out

    def warm_up(self, task: Task, units: torch.Tensor) -> None:
        """The paper's warm-up: train only the new units' head rows, the body and old units frozen."""
        if len(units) == 0:
            return
        head = self.model.head
        features = self.features_of(task.x_train)
        y = task.y_train.to(features.device)
        with torch.no_grad():
            fixed = F.linear(features, head.weight, head.bias)
        weight = head.weight[units].detach().clone().requires_grad_(True)
        bias = None if head.bias is None else head.bias[units].detach().clone().requires_grad_(True)
        trained = [weight] if bias is None else [weight, bias]
        for _ in range(self.warmup_steps):
            logits = fixed.index_copy(1, units, F.linear(features, weight, bias))
            loss = self.loss(logits, y)
            grads = torch.autograd.grad(loss, trained)
            with torch.no_grad():
                for tensor, gradient in zip(trained, grads, strict=True):
                    tensor -= self.lr * gradient
        with torch.no_grad():
            head.weight[units] = weight.detach()
            if bias is not None:
                head.bias[units] = bias.detach()

    def __repr__(self) -> str:
        return f"LwF(lr={self.lr}, lamb={self.lamb}, T={self.T}, warmup_steps={self.warmup_steps})"
