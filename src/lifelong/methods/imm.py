"""Incremental Moment Matching (IMM): Lee, Kim, Jun, Ha and Zhang, NeurIPS 2017, "Overcoming
Catastrophic Forgetting by Incremental Moment Matching" (arXiv:1703.08475).

Each task ``k`` is trained into its own parameters ``μ_k`` (the mean of a Gaussian approximation
of that task's posterior), and the network that predicts is their merge with mixing weights
``α_k`` (``Σ_k α_k = 1``):

- **mean-IMM** (``mode="mean"``): the mixture's mean, ``μ_{1:K} = Σ_k α_k μ_k``;
- **mode-IMM** (``mode="mode"``): the mode of the mixture under a Laplace approximation with
  diagonal covariances ``Σ_k^{-1} ≈ F_k``, ``μ_{1:K} = (Σ_k α_k F_k)^{-1} Σ_k α_k F_k μ_k``
  element-wise, where ``F_k`` is the diagonal Fisher information of task ``k`` at ``μ_k`` plus
  ``eps`` (so a parameter no task is informed about still has a defined merge).

The transfer techniques that make the merge work (the paper's Sec. 3) are both applied while a
task trains:

- **weight-transfer**: task ``k`` starts from ``μ_{k-1}``;
- **L2-transfer**: the loss adds ``lamb · ‖θ − μ_{k-1}‖²`` (over all parameters).

The paper merges once after the last task; to evaluate after every task the merge is redone after
each one, over the tasks seen so far, and ``predict`` uses it. ``μ_{k-1}`` (``transfer``) is the
previous task's trained parameters (``"trained"``, the paper and its code: merging happens only
at the end there) or the previous merge (``"merged"``, the HAT code's mean-IMM).

Mixing weights: ``alpha=None`` gives every task seen so far the same weight ``1/K``; a value
gives the newest task ``alpha`` and each older task ``(1 − alpha)/(K − 1)``, the authors' code's
scheme (one ``alpha`` for the last task). Old tasks then always share one weight, so running sums
suffice instead of every ``μ_k``: ``Σ_{k<K} μ_k`` (mean), ``Σ_{k<K} F_k μ_k`` and ``Σ_{k<K} F_k``
(mode), plus the last ``μ_{K}`` for weight-transfer; `memory()` reports them.

Fisher: ``F_k = (1/N) Σ_n (∇_θ log p(ŷ_n | x_n; μ_k))²`` over the task's training examples, with
``ŷ_n`` drawn from the network's own predictive distribution over the task's training units (as
the authors' code draws it), per-example gradients in eval mode, ``eps = 1e-8`` added (the
authors' code's constant). The authors' code squares the gradient of the mean loss of minibatches
of 1000 examples and sums over minibatches instead of averaging per-example squares.

Defaults: ``lr=0.1`` and ``lamb=1e-4`` with ``‖θ − μ_{k-1}‖²`` not halved, ``alpha`` uniform
(``1/3`` for its three tasks), ``eps=1e-8``: the authors' code (btjhjeon/IMM_tensorflow,
main_l2.py, utils.SetDefaultAsNatural; it also has drop-transfer, not implemented here). The HAT
code (joansj/hat, src/approaches/imm_mean.py, imm_mode.py) differs: lr 0.05; mean-IMM with
``regularizer=1e-4`` on ``½‖θ − θ_old‖²`` where ``θ_old`` is the previous *merged* network, which
is also where each task starts, merging ``(μ_t + t · merged_{t-1}) / (t + 1)`` (uniform ``1/t``);
mode-IMM with ``lamb=0.01`` (its comment says 1 was best) on ``½‖θ − θ_old‖²``, a Fisher from the
true labels (empirical, minibatches of 20, no eps), accumulated as a sum (uniform weights) — but
its merge assigns the result to a loop variable, so the network is never changed and HAT's
mode-IMM predicts with the last task's trained parameters.

Only parameters are merged; buffers (e.g. batch-norm statistics) keep the last task's values.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.registry import METHODS
from lifelong.params import NonNegative, Positive, Range

#: examples whose per-example gradients are computed at once (``chunk * n_parameters`` floats)
FISHER_CHUNK = 128


@torch.no_grad()
def sample_labels(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
                  generator: torch.Generator) -> torch.Tensor:
    """One label per example drawn from the model's softmax over ``mask`` (CPU ``generator``)."""
    probs = F.softmax(mask_logits(model(x), mask), dim=1)
    return torch.multinomial(probs.cpu().double(), 1, generator=generator).squeeze(1).to(x.device)


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor | None) -> list[torch.Tensor]:
    """``(1/N) Σ_n (∇ log p(y_n | x_n))²`` for every parameter, per-example, model as it is."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def example_loss(p, b, xi, yi):
        logits = functional_call(model, (p, b), (xi.unsqueeze(0),))
        return F.cross_entropy(mask_logits(logits, mask), yi.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, None, 0, 0))
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    for xc, yc in zip(x.split(FISHER_CHUNK), y.split(FISHER_CHUNK), strict=True):
        for name, g in per_example(params, buffers, xc, yc).items():
            sums[name] += g.pow(2).sum(0)
    return [sums[name] / max(1, len(y)) for name in params]


@METHODS.register("imm")
class IMM(Method):
    """Incremental Moment Matching: merge per-task parameters by their mean or Fisher-weighted mode."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.1,
        mode: Literal["mean", "mode"] = "mean",
        lamb: Annotated[float, NonNegative] = 1e-4,
        alpha: Annotated[float, Range(0, 1, low_open=True)] | None = None,
        transfer: Literal["trained", "merged"] = "trained",
        eps: Annotated[float, Positive] = 1e-8,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.mode = mode
        self.lamb = lamb
        self.alpha = alpha
        self.transfer = transfer
        self.eps = eps
        self.n_merged = 0  # tasks merged so far
        self.trained: list[torch.Tensor] | None = None  # μ of the last task (weight-transfer)
        self.param_sum: list[torch.Tensor] | None = None  # mean: Σ_{k<K} μ_k; mode: Σ F_k μ_k
        self.fisher_sum: list[torch.Tensor] | None = None  # mode: Σ_{k<K} F_k (eps included)
        self.anchor: list[torch.Tensor] | None = None  # μ_{k-1} of the L2-transfer
        self.generator: torch.Generator | None = None

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if self.mode not in ("mean", "mode"):
            raise ValueError(f"mode={self.mode!r} is not allowed; allowed values: mean, mode")
        if self.transfer not in ("trained", "merged"):
            raise ValueError(f"transfer={self.transfer!r} is not allowed; allowed values: trained, merged")
        if self.alpha is not None and not 0 < self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha} must be in (0, 1] or None")
        super().begin_task(task)
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        if self.n_merged == 0:
            self.anchor = None
            return
        if self.transfer == "trained":  # weight-transfer from μ_{k-1}, not from the merge
            with torch.no_grad():
                for p, mu in zip(self.model.parameters(), self.trained, strict=True):
                    p.copy_(mu)
        self.anchor = [p.detach().clone() for p in self.model.parameters()]

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        loss = self.loss(self.model(x), y)
        if self.anchor is not None and self.lamb > 0:
            loss = loss + self.lamb * self.l2_transfer()
        self.step(loss)
        return loss.detach()

    def l2_transfer(self) -> torch.Tensor:
        """``‖θ − μ_{k-1}‖²`` over all parameters."""
        return sum((p - a).pow(2).sum() for p, a in zip(self.model.parameters(), self.anchor, strict=True))

    def end_task(self, task: Task) -> None:
        """Store this task's moments and load the merge of all tasks so far into the network."""
        mu = [p.detach().clone() for p in self.model.parameters()]
        fisher = self.task_fisher(task) if self.mode == "mode" else None
        k = self.n_merged  # older tasks
        new_weight = 1.0 / (k + 1) if self.alpha is None or k == 0 else self.alpha
        old_weight = 0.0 if k == 0 else (1.0 - new_weight) / k
        with torch.no_grad():
            if self.mode == "mean":  # Σ_k α_k μ_k
                if k == 0:
                    merged, self.param_sum = mu, [m.clone() for m in mu]
                else:
                    merged = [old_weight * s + new_weight * m
                              for s, m in zip(self.param_sum, mu, strict=True)]
                    self.param_sum = [s + m for s, m in zip(self.param_sum, mu, strict=True)]
            else:  # (Σ_k α_k F_k)^-1 Σ_k α_k F_k μ_k, element-wise
                weighted = [f * m for f, m in zip(fisher, mu, strict=True)]
                if k == 0:  # one task: its own parameters (the ratio, up to rounding)
                    merged = mu
                    self.param_sum, self.fisher_sum = weighted, fisher
                else:
                    merged = [(old_weight * s + new_weight * w) / (old_weight * g + new_weight * f)
                              for s, w, g, f in zip(self.param_sum, weighted, self.fisher_sum, fisher,
                                                    strict=True)]
                    self.param_sum = [s + w for s, w in zip(self.param_sum, weighted, strict=True)]
                    self.fisher_sum = [g + f for g, f in zip(self.fisher_sum, fisher, strict=True)]
            for p, value in zip(self.model.parameters(), merged, strict=True):
                p.copy_(value)
        self.trained = mu if self.transfer == "trained" else None
        self.n_merged = k + 1
        self.anchor = None

    def task_fisher(self, task: Task) -> list[torch.Tensor]:
        """``F_k + eps`` at the task's trained parameters, labels drawn from the network."""
        training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        x = task.x_train.to(device)
        mask = None if self.train_mask is None else self.train_mask.to(device)
        y = torch.cat([sample_labels(self.model, chunk, mask, self.generator)
                       for chunk in x.split(FISHER_CHUNK)])
        fisher = diagonal_fisher(self.model, x, y, mask)
        self.model.train(training)
        return [f + self.eps for f in fisher]

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> IMM:
        super().to(device)
        for name in ("trained", "param_sum", "fisher_sum", "anchor"):
            tensors = getattr(self, name)
            if tensors is not None:
                setattr(self, name, [t.to(device) for t in tensors])
        return self

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({
            "n_merged": self.n_merged,
            "trained": self.trained,
            "param_sum": self.param_sum,
            "fisher_sum": self.fisher_sum,
            "generator": None if self.generator is None else self.generator.get_state(),
        })
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        device = next(self.model.parameters()).device

        def to_device(tensors):
            return None if tensors is None else [t.to(device) for t in tensors]

        self.n_merged = state["n_merged"]
        self.trained = to_device(state["trained"])
        self.param_sum = to_device(state["param_sum"])
        self.fisher_sum = to_device(state["fisher_sum"])
        self.anchor = None
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def memory(self) -> dict[str, int]:
        stored = (self.trained or []) + (self.param_sum or [])
        fisher = self.fisher_sum or []
        return {
            **super().memory(),
            "stored_parameters": sum(t.numel() for t in stored),
            "stored_parameter_bytes": tensor_bytes(*stored),
            "fisher_values": sum(t.numel() for t in fisher),
            "fisher_bytes": tensor_bytes(*fisher),
        }

    def __repr__(self) -> str:
        return (f"IMM(lr={self.lr}, mode={self.mode!r}, lamb={self.lamb}, alpha={self.alpha}, "
                f"transfer={self.transfer!r})")
