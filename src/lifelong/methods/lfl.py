"""Less-Forgetting Learning (LFL): Jung, Ju, Jung and Kim, 2016, "Less-forgetting Learning in Deep
Neural Networks" (arXiv:1607.00122).

The paper adapts a network trained on a source domain to a target domain without the source
data, with two ingredients (its Algorithm 1):

- the new network starts from the old one and its softmax (output) layer is frozen, so the
  decision boundaries stay where the old data put them;
- the total loss adds to the cross-entropy of the new data a Euclidean loss that keeps the top
  hidden layer's features close to the old network's on the same (new) inputs::

      L_t(x) = L_c(x; θ_n) + λ_e · ½ ‖f_{L-1}(x; θ_o) − f_{L-1}(x; θ_n)‖²

Here ``f_{L-1}`` is ``model.features(x)`` (the head's input), ``θ_o`` a frozen copy of the network
after the previous task, and both terms are averaged over the minibatch. The output layer is the
head: its units of earlier tasks never move after those tasks (their weight and bias rows get no
update), while the current task's new units train. In the paper's setting, one label set in new
domains (the domain-incremental scenario), that is the whole head; a task-incremental task trains
its own new head and a class-incremental task its new classes' rows, with every old row frozen.

Defaults: ``lamb`` is ``λ_e``. The HAT code (joansj/hat, src/approaches/lfl.py) uses ``lamb=0.05``
(best of a grid from 1e-1 to 5e-5, "but none of them really worked") on the squared distance
halved and *summed* over its minibatch of 64 examples, next to a cross-entropy averaged over it;
averaged here, that is ``λ_e = 0.05 · 64 = 3.2`` per example, the default. Its learning rate, 0.05,
is the default here. HAT's code freezes nothing explicitly: its multi-head network trains the new
task's head and leaves the old heads out of the loss (so they do not move either), and it clips
gradients at norm 200. The paper's own value of ``λ_e`` could not be checked for this file.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.previous_model import PreviousModelMethod
from lifelong.methods.registry import METHODS
from lifelong.params import NonNegative, Positive


def feature_distance(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """``½ ‖f_old − f_new‖²`` per example, averaged over the minibatch."""
    return 0.5 * (old_features - features).pow(2).flatten(1).sum(1).mean()


@METHODS.register("lfl")
class LFL(PreviousModelMethod):
    """Less-Forgetting Learning: keep the penultimate features close to the previous network's."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.05,
        lamb: Annotated[float, NonNegative] = 3.2,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.lamb = lamb
        self.old_model: nn.Module | None = None
        self.frozen_units: torch.Tensor | None = None  # bool over head units: rows that never move

    def begin_task(self, task: Task) -> None:
        if self.lamb < 0:
            raise ValueError(f"lamb={self.lamb} must be non-negative")
        super().begin_task(task)
        layout = task.layout
        frozen = torch.zeros(layout.n_units, dtype=torch.bool)
        for t in range(task.id):
            frozen |= layout.task_mask(t)
        self.frozen_units = frozen.to(next(self.model.parameters()).device)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        features = self.model.features(x)
        loss = self.loss(self.model.head(features), y)
        if self.old_model is not None and self.lamb > 0:
            with torch.no_grad():
                old_features = self.old_model.features(x)
            loss = loss + self.lamb * feature_distance(features, old_features)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.freeze_old_units()
        self.optimizer.step()
        return loss.detach()

    def freeze_old_units(self) -> None:
        """Zero the gradient rows of the old units' output weights and biases (plain SGD: no move)."""
        if self.frozen_units is None or not bool(self.frozen_units.any()):
            return
        for parameter in (self.model.head.weight, self.model.head.bias):
            if parameter is not None and parameter.grad is not None:
                parameter.grad[self.frozen_units] = 0.0

    def __repr__(self) -> str:
        return f"LFL(lr={self.lr}, lamb={self.lamb})"
