"""Shared parts of the quadratic-anchor regularisers (EWC, SI, MAS); registers no method.

Each of these methods adds to the task loss a pull of every trained parameter toward a stored
value, weighted by a per-parameter importance::

    sum_i  Omega_i * (theta_i - theta*_i)^2

and differs only in how ``Omega`` is estimated (Fisher information, path integral, output
sensitivity) and how estimates of successive tasks are combined. This module holds

- `QuadraticAnchor`: the importance and anchor (``theta*``) of every parameter, the penalty
  above, the combination of a new task's importance with the stored one (sum, running mean, or
  one penalty per task) and the state round trip;
- `trainable`, `detached`: the named trainable parameters of a model, and copies of them;
- `summed_example_gradients`: ``sum_k transform(grad_theta s(f(x_k), y_k))`` over examples, with
  per-example gradients from ``torch.func`` (the EWC per-sample Fisher and the MAS importance);
- `warn_if_unstable`: plain SGD diverges on a quadratic penalty once ``lr`` times its curvature
  exceeds 2, which a large importance (or ``lamb``) reaches easily.

Tensors are kept in dicts keyed by parameter name (``model.named_parameters()``), so a state
saved from one network loads into another of the same architecture.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

Tensors = dict[str, torch.Tensor]

#: examples whose gradients are computed at once by `summed_example_gradients` (bounds memory:
#: the per-example gradients of a chunk take ``chunk * n_parameters`` floats)
EXAMPLES_PER_CHUNK = 128


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimizer trains, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def detached(tensors: dict[str, torch.Tensor]) -> Tensors:
    """Detached copies (a snapshot of the parameters, or of accumulated statistics)."""
    return {name: t.detach().clone() for name, t in tensors.items()}


class QuadraticAnchor:
    """``sum_i importance_i * (theta_i - anchor_i)^2`` over named parameters, task after task.

    `consolidate(params, new)` adds a task's importance estimate ``new`` at the current
    parameters ``theta*``. How estimates of successive tasks combine is ``merge``:

    - ``sum``: ``Omega <- Omega + new`` and the anchor moves to ``theta*`` (SI's and MAS's
      official code);
    - ``mean``: the running mean ``Omega <- (k * Omega + new) / (k + 1)`` over the ``k + 1``
      estimates, anchor ``theta*`` (the HAT code's online EWC);
    - ``separate``: one penalty per task, ``sum_k new_k * (theta - theta*_k)^2`` (the EWC paper's
      and the GEM code's EWC). A sum of quadratics is one quadratic (Kirkpatrick et al. note it),
      so it is stored as ``Omega = sum_k new_k``, the importance-weighted mean anchor
      ``sum_k new_k theta*_k / Omega`` and the constant ``offset`` that makes the value equal the
      sum: the same penalty and gradient as ``k`` stored copies, in two copies of the parameters.

    Before the first call the penalty is zero.
    """

    MERGES = ("sum", "mean", "separate")

    def __init__(self, merge: Literal["sum", "mean", "separate"] = "sum") -> None:
        if merge not in self.MERGES:
            raise ValueError(f"merge={merge!r} is not one of {self.MERGES}")
        self.merge = merge
        self.importance: Tensors | None = None
        self.anchor: Tensors | None = None
        self.offset = 0.0  # ``separate``: the penalty's value at theta = anchor
        self.count = 0  # estimates consolidated so far

    @property
    def active(self) -> bool:
        return self.importance is not None

    def consolidate(self, params: dict[str, torch.Tensor], importance: Tensors) -> None:
        """Combine the ``importance`` of the task just learnt with the stored one (see class)."""
        new, here = detached(importance), detached(params)
        if self.importance is None:
            self.importance, self.anchor = new, here
        elif self.merge == "sum":
            self.importance = {n: self.importance[n] + new[n] for n in new}
            self.anchor = here
        elif self.merge == "mean":
            k = self.count
            self.importance = {n: (self.importance[n] * k + new[n]) / (k + 1) for n in new}
            self.anchor = here
        else:
            importance, anchor = {}, {}
            for n in new:
                old, centre = self.importance[n], self.anchor[n]
                total = old + new[n]
                mean = torch.where(total > 0, (old * centre + new[n] * here[n]) / total, here[n])
                # sum_k F_k a_k^2 = offset + F a^2 before; after, offset' = that - F' a'^2
                self.offset += float((old.double() * centre.double() ** 2
                                      + new[n].double() * here[n].double() ** 2
                                      - total.double() * mean.double() ** 2).sum())
                importance[n], anchor[n] = total, mean
            self.importance, self.anchor = importance, anchor
        self.count += 1

    def penalty(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted squared distance to the anchor(s) (differentiable in ``params``)."""
        if self.importance is None:
            return next(iter(params.values())).new_zeros(())
        value = sum((self.importance[n] * (p - self.anchor[n]).pow(2)).sum()
                    for n, p in params.items())
        return value + self.offset if self.offset else value

    def max_importance(self) -> float:
        if self.importance is None:
            return 0.0
        return max(float(t.max()) for t in self.importance.values())

    def memory(self, name: str) -> dict[str, int]:
        """Counts and bytes of the stored importance (as ``name``) and anchor."""
        importance = [] if self.importance is None else list(self.importance.values())
        anchor = [] if self.anchor is None else list(self.anchor.values())
        return {f"{name}_values": sum(t.numel() for t in importance),
                f"{name}_bytes": sum(t.numel() * t.element_size() for t in importance),
                "anchor_values": sum(t.numel() for t in anchor),
                "anchor_bytes": sum(t.numel() * t.element_size() for t in anchor)}

    def to(self, device: torch.device | str) -> QuadraticAnchor:
        if self.importance is not None:
            self.importance = {n: t.to(device) for n, t in self.importance.items()}
            self.anchor = {n: t.to(device) for n, t in self.anchor.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"merge": self.merge, "importance": self.importance, "anchor": self.anchor,
                "offset": self.offset, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QuadraticAnchor:
        anchor = cls(state["merge"])
        anchor.importance = None if state["importance"] is None else dict(state["importance"])
        anchor.anchor = None if state["anchor"] is None else dict(state["anchor"])
        anchor.offset = float(state["offset"])
        anchor.count = int(state["count"])
        return anchor


def warn_if_unstable(method: str, lr: float, curvature: float, knob: str) -> None:
    """Warn when plain SGD at ``lr`` diverges on the penalty alone.

    Along parameter ``i`` the penalty is ``curvature_i / 2 * (theta_i - theta*_i)^2``; an SGD step
    multiplies the distance to the anchor by ``1 - lr * curvature_i``, which grows it once
    ``lr * curvature_i > 2``. ``curvature`` is the largest ``curvature_i``.
    """
    if lr * curvature > 2:
        warnings.warn(
            f"{method}: lr * (largest curvature of the penalty) = {lr:g} * {curvature:.3g} = "
            f"{lr * curvature:.3g} > 2, so SGD on the penalty diverges along the most important "
            f"parameters; lower lr or {knob}", RuntimeWarning, stacklevel=3)


def summed_example_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    transform: Callable[[torch.Tensor], torch.Tensor],
    task_id: int | None = None,
) -> Tensors:
    """``sum_k transform(grad_theta score(f(x_k), y_k))`` for every trainable parameter.

    ``score(logits, label)`` maps one example's logits (1-d) and label to a scalar; ``transform``
    is applied elementwise to each example's gradient (``torch.square`` for a Fisher diagonal,
    ``torch.abs`` for MAS). Gradients are taken per example with ``vmap(grad(...))`` in chunks of
    `EXAMPLES_PER_CHUNK`, in eval mode (no dropout; batch-norm on its running statistics), at the
    current parameters.
    """
    params = {name: p.detach() for name, p in trainable(model).items()}
    buffers = dict(model.named_buffers())

    def example_score(params: Tensors, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), (xi[None], task_id))[0]
        return score(logits, yi)

    per_example = vmap(grad(example_score), in_dims=(None, 0, 0))
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), EXAMPLES_PER_CHUNK):
            chunk = slice(start, start + EXAMPLES_PER_CHUNK)
            grads = per_example(params, x[chunk], y[chunk])
            for name, g in grads.items():
                total[name] += transform(g).sum(0)
    finally:
        model.train(was_training)
    return total
