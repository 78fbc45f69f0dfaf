"""MAS: Memory Aware Synapses (Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, ECCV 2018,
"Memory Aware Synapses: Learning what (not) to forget").

A parameter is important if changing it changes what the network outputs. After each task the
importance of parameter ``i`` is the mean, over the task's ``N`` training examples, of the magnitude
of the gradient of the squared L2 norm of the output,

    Omega_i = 1/N sum_k | d ||F(x_k; theta)||_2^2 / d theta_i | ,

with ``F`` the logits of the units the task trains (its own head in task-incremental streams, the
shared head in domain-incremental ones, every unit seen so far in class-incremental ones). No label
is used. Later tasks minimise their loss plus

    lamb * sum_i Omega_i (theta_i - theta*_i)^2 .

As the official code (rahafaljundi/MAS-Memory-Aware-Synapses, ``MAS_utils/MAS_based_Training.py``):

- the gradient is that of the squared norm (``MSELoss(size_average=False)`` against zeros), in
  eval mode, at the parameters learnt on the task;
- within a task, Omega is the running average over its examples (``MAS_Omega_update``: ``omega =
  (omega * prev_size + |g|) / curr_size``). With ``b1=True`` (one example per batch, the default of
  its ``MAS_Omega_Acuumelation``) that is the per-example mean above, which is what is computed
  here, in one vectorised pass (`penalty.summed_example_gradients`); the code's larger batches take
  ``|sum of the batch's gradients|`` instead, which is not the paper's equation;
- across tasks the new Omega is added to the stored one (``accumelate_reg_params``: ``prev_omega +
  new_omega``, a sum, not an average) and the anchor ``theta*`` is the parameters at the start of
  the next task, i.e. after the latest one (`penalty.QuadraticAnchor`, ``sum``);
- the penalty's gradient added to the step is ``2 * lamb * Omega * (theta - theta*)``
  (``Weight_Regularized_SGD``), the gradient of the penalty above.

Defaults: ``lamb=1``, the paper's and the code's ("In object recognition it was set to 1").
``lr=0.03``: plain SGD at the GEM script's rate on permuted MNIST, as `finetune`; the official
code trains AlexNet with SGD, momentum 0.9, ``lr=0.0008``, batches of 200 (``MAS.py`` defaults).
The HAT code (joansj/hat ``src/approaches/``) has no MAS.

Mind the scale on long streams: Omega is a sum over tasks of unnormalised output sensitivities, and
SGD on the penalty diverges once ``lr * 2 * lamb * max Omega > 2`` (`penalty.warn_if_unstable`
warns at the start of such a task). On the GEM protocol (permuted MNIST, 20 tasks of 1000
examples, one epoch, batch 10, MLP 784-100-100-10, seed 0; finetune ACC 0.565) the largest Omega
grows by about 3 per task: the defaults diverge at the tenth task (ACC 0.098), ``lamb=0.1`` gives
ACC 0.633 (BWT -0.083), ``lamb=0.3`` 0.567, and ``lamb=1`` at ``lr=0.01`` 0.496.

Cost: after each task one gradient per training example; per step one elementwise pass over the
parameters. Memory: Omega and the anchor, two float32 copies of the trained parameters.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method
from lifelong.methods.penalty import QuadraticAnchor, summed_example_gradients, trainable, warn_if_unstable
from lifelong.methods.registry import METHODS
from lifelong.params import NonNegative, Positive


@METHODS.register("mas")
class MAS(Method):
    """Memory Aware Synapses: importance from the output's sensitivity to each parameter."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        lamb: Annotated[float, NonNegative] = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.lamb = lamb
        self.consolidated: QuadraticAnchor | None = None

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if self.lamb < 0:
            raise ValueError(f"lamb={self.lamb} must be >= 0")
        super().begin_task(task)
        self.params = trainable(self.model)
        if self.consolidated is None:
            self.consolidated = QuadraticAnchor("sum")
        warn_if_unstable("mas", self.lr, 2 * self.lamb * self.consolidated.max_importance(), "lamb")

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.model(x, task_id), y)
        self.step(loss + self.penalty() if self.consolidated.active else loss)
        return loss.detach()

    def end_task(self, task: Task) -> None:
        self.consolidated.consolidate(self.params, self.importance(task))

    # ----------------------------------------------------------------------------- MAS
    def penalty(self) -> torch.Tensor:
        """``lamb * sum_i Omega_i (theta_i - theta*_i)^2``."""
        return self.lamb * self.consolidated.penalty(self.params)

    def importance(self, task: Task) -> dict[str, torch.Tensor]:
        """``1/N sum_k |grad ||F(x_k)||^2|`` over the task's training examples, by name."""
        device = next(iter(self.params.values())).device
        x, y = task.x_train.to(device), task.y_train.to(device)
        mask = task.train_mask
        units = (torch.arange(task.layout.n_units) if mask is None else mask.nonzero().squeeze(1))
        units = units.to(device)

        def squared_norm(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return logits[units].pow(2).sum()

        total = summed_example_gradients(self.model, x, y, squared_norm, torch.abs, task.id)
        return {name: t / len(y) for name, t in total.items()}

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> MAS:
        super().to(device)
        if self.consolidated is not None:
            self.consolidated.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "consolidated": None if self.consolidated is None else self.consolidated.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.consolidated = None
        if state["consolidated"] is not None:
            self.consolidated = QuadraticAnchor.from_state(state["consolidated"])

    def memory(self) -> dict[str, int]:
        stored = QuadraticAnchor() if self.consolidated is None else self.consolidated
        return {**super().memory(), **stored.memory("importance")}

    def __repr__(self) -> str:
        return f"MAS(lr={self.lr}, lamb={self.lamb})"
