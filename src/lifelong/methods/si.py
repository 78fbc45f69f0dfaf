"""SI: Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017, "Continual Learning Through
Synaptic Intelligence").

Each parameter's importance is its contribution to the drop of the loss along the training
trajectory. While task ``mu`` trains, every step adds to a running path integral

    omega_i <- omega_i - g_i * Delta theta_i ,

with ``g`` the gradient of the task loss alone (the unregularised gradient, as the paper defines
the path integral and the official code ``ganguli-lab/pathint`` computes it from ``unreg_grads``)
and ``Delta theta`` the change the optimizer step actually made. At the end of the task

    Omega_i <- max(0, Omega_i + omega_i / ((Delta_i)^2 + xi)) ,    Delta_i = theta_i(end) - theta_i(start),

then ``omega`` is reset and the anchor ``theta~`` becomes the current parameters. The ``max(0, .)``
is the official code's (``tf.nn.relu`` around the sum in ``protocols.PATH_INT_PROTOCOL``; the
paper's formula has none): a step of the penalised objective can increase the task loss, so
``omega`` can be negative. Later tasks minimise the task loss plus the surrogate

    c * sum_i Omega_i (theta_i - theta~_i)^2 .

Omega accumulates over tasks by summation (the code's ``omega_decay='sum'``) with one anchor, the
parameters after the latest task (`penalty.QuadraticAnchor`, ``sum``).

Defaults, from the official code: ``c=0.1`` and ``xi=0.1`` are its permuted-MNIST ones (the
notebook ``fig_permuted_mnist`` sets ``xi = 0.1`` and its figure plots ``c`` = 0, 0.01, 0.02, 0.1),
the benchmark closest to this library's MNIST protocols; its split-MNIST notebook uses ``c=1,
xi=1e-3`` and its CIFAR script ``xi=1e-3`` with ``c`` in 0, 0.01, 0.1. The official code trains with
Adam (``lr=1e-3``, batch 256, 20 epochs per task on permuted MNIST); here, as for every method of the
library, plain SGD, with ``lr=0.03`` (the GEM script's SGD rate on permuted MNIST, as `finetune`).
On the GEM protocol (permuted MNIST, 20 tasks of 1000 examples, one epoch, batch 10, MLP
784-100-100-10, seed 0) the defaults reach ACC 0.583 (BWT -0.221; finetune 0.565, -0.243) and
``c=1`` 0.651 (BWT -0.129). The HAT code (joansj/hat ``src/approaches/``) has no SI.

Cost per step: a few elementwise passes over the parameters (copying the task gradient and the
parameters before the step, updating omega, the penalty and its gradient). Memory: ``Omega`` and
the anchor, plus ``omega`` and the start of the current task while it trains: four float32 copies
of the trained parameters.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method
from lifelong.methods.penalty import QuadraticAnchor, detached, trainable, warn_if_unstable
from lifelong.methods.registry import METHODS
from lifelong.params import NonNegative, Positive


@METHODS.register("si")
class SI(Method):
    """Synaptic Intelligence: importance from each parameter's share of the loss decrease."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        c: Annotated[float, NonNegative] = 0.1,
        xi: Annotated[float, Positive] = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.c = c
        self.xi = xi
        self.consolidated: QuadraticAnchor | None = None
        self.path: dict[str, torch.Tensor] | None = None  # omega: the running path integral
        self.start: dict[str, torch.Tensor] | None = None  # parameters when the task began

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if self.c < 0:
            raise ValueError(f"c={self.c} must be >= 0")
        if self.xi <= 0:
            raise ValueError(f"xi={self.xi} must be > 0 (it keeps omega / (Delta^2 + xi) finite)")
        super().begin_task(task)
        self.params = trainable(self.model)
        if self.consolidated is None:
            self.consolidated = QuadraticAnchor("sum")
        warn_if_unstable("si", self.lr, 2 * self.c * self.consolidated.max_importance(), "c")
        self.start = detached(self.params)
        self.path = {name: torch.zeros_like(p) for name, p in self.params.items()}

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.model(x, task_id), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        unregularised = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                         for n, p in self.params.items()}
        if self.consolidated.active:
            self.penalty().backward()
        before = detached(self.params)
        self.optimizer.step()
        with torch.no_grad():
            for name, p in self.params.items():
                self.path[name] -= unregularised[name] * (p - before[name])
        return loss.detach()

    def end_task(self, task: Task) -> None:
        with torch.no_grad():
            importance = {name: self.path[name] / ((p - self.start[name]).pow(2) + self.xi)
                          for name, p in self.params.items()}
            self.consolidated.consolidate(self.params, importance)
            for omega in self.consolidated.importance.values():
                omega.clamp_(min=0)

    # ----------------------------------------------------------------------------- SI
    def penalty(self) -> torch.Tensor:
        """The surrogate loss ``c * sum_i Omega_i (theta_i - theta~_i)^2``."""
        return self.c * self.consolidated.penalty(self.params)

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> SI:
        super().to(device)
        if self.consolidated is not None:
            self.consolidated.to(device)
        for stored in ("path", "start"):
            if getattr(self, stored) is not None:
                setattr(self, stored, {n: t.to(device) for n, t in getattr(self, stored).items()})
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "consolidated": None if self.consolidated is None else self.consolidated.state_dict(),
            "path": self.path,
            "start": self.start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.consolidated = None
        if state["consolidated"] is not None:
            self.consolidated = QuadraticAnchor.from_state(state["consolidated"])
        self.path = None if state["path"] is None else dict(state["path"])
        self.start = None if state["start"] is None else dict(state["start"])

    def memory(self) -> dict[str, int]:
        stored = QuadraticAnchor() if self.consolidated is None else self.consolidated
        running = [*(self.path or {}).values(), *(self.start or {}).values()]
        return {**super().memory(), **stored.memory("importance"),
                "path_values": sum(t.numel() for t in running),
                "path_bytes": sum(t.numel() * t.element_size() for t in running)}

    def __repr__(self) -> str:
        return f"SI(lr={self.lr}, c={self.c}, xi={self.xi})"
