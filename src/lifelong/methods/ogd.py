"""OGD: Orthogonal Gradient Descent (Farajtabar, Azizan, Mott & Li, AISTATS 2020).

OGD keeps no examples but directions in parameter space. After task ``k`` it stores, for a few of
the task's training examples ``x``, the gradients of the network's outputs ``grad_w f_j(x; w*_k)``
at the task's final weights ``w*_k``; moving ``w`` orthogonally to all of them leaves those outputs
unchanged to first order, so what the network predicted on task ``k`` is kept.

- After task ``k`` (the paper's Algorithm 1, after the task's loop): ``memory_per_task`` examples
  of the task, drawn by a seeded generator kept in the state, give the output gradients of the
  chosen ``variant``:

  * ``gtl`` (OGD-GTL, the paper's best): ``grad_w f_y(x)``, the logit of the ground-truth label;
  * ``all`` (OGD-ALL): ``grad_w f_j(x)`` for every output unit ``j`` of the task;
  * ``ave`` (OGD-AVE): ``grad_w mean_j f_j(x)``, the gradient of the average of those logits.

  A task's units are the units it trains (`HeadLayout.train_mask`: its own head in task-incremental
  streams, the shared head in domain-incremental ones, every unit seen so far in class-incremental
  ones). Each vector is orthonormalised against the stored basis ``S`` by Gram-Schmidt and appended;
  a vector whose residual is below ``1e-3`` of its norm is already (numerically) in ``span(S)`` and
  is dropped (the paper does not say how it treats dependent vectors).
- While a later task trains (Algorithm 1, inner loop), the minibatch gradient ``g`` of the
  cross-entropy over the task's units is replaced by its projection on the orthogonal complement of
  ``span(S)``, and plain SGD steps along it::

      g~ = g - sum_{v in S} <g, v> v = g - S'(S g),        w <- w - lr * g~

GTL protects only the true label's logit: when a later task pushes another logit of the same
examples up (two tasks that contradict each other on the same inputs), the prediction can still
flip; ``all`` keeps every logit of the task (``tests/test_method_ogd.py`` shows both).

Defaults, from the paper's experimental setup for its MNIST benchmarks: plain SGD with
``lr=1e-3`` (batch size 10, the library's default batch too) and 200 stored examples per task
(200 vectors per task with GTL; ``all`` stores up to 200 x the task's units). The paper trains
each task for 5 epochs (on more examples than the GEM protocol's 1000): under the GEM protocol
(20 tasks, 1000 examples, 1 epoch) ``lr=1e-3`` makes 100 steps per task and learns almost
nothing (ACC 0.13); there, use the protocol's rate (``lr=0.03``: ACC 0.68, BWT -0.14, against
finetune's 0.56, -0.25).

Cost and memory. ``S`` is a dense float32 ``(k, P)`` matrix (``P`` = number of trainable
parameters), held as a list of blocks of rows so that adding vectors never copies it. A step costs
two matrix-vector products, ``c = S g`` and ``S'c``, memory-bound (``2 k P`` floats read: about
0.15-0.3 s at ``k = 4000`` on two cores). ``max_basis`` bounds ``k``: the default 4000 holds 20
tasks of 200 GTL vectors, which for the GEM MLP (784-100-100-10, ``P = 89,610``) is 4000 x 89,610 x
4 B = 1.43 GB, held in memory and in every checkpoint. float32 on purpose: half precision would
lose orthonormality (its ~1e-3 rounding makes ``I - S'S`` no projector) and double would double the
memory for no accuracy the float32 gradients could use. Once the basis is full, further vectors are
not stored (later tasks are then unprotected) and are counted in ``memory()['basis_dropped']``;
for larger networks lower ``max_basis`` (or ``memory_per_task``): the bytes are ``max_basis * P *
4``.

Output gradients are computed per example in one call, ``torch.func.vmap`` of ``grad`` (GTL, AVE)
or ``jacrev`` (ALL) of the network's ``functional_call`` (in eval mode, so dropout is off and
batch-norm uses its running statistics); ``output_gradients_loop`` computes the same by one backward
pass per output, for tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, flat_gradient, tensor_bytes, write_flat_gradient
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, Positive

#: a new direction whose Gram-Schmidt residual is below this fraction of its norm is dropped
RESIDUAL_TOLERANCE = 1e-3
#: a Gram-Schmidt pass that left less than this share of a vector's norm is repeated once
#: (Kahan and Parlett's "twice is enough": after a pass that kept at least 1/sqrt(2) of the norm the
#: residual is orthogonal to working precision; otherwise one more pass makes it so)
REORTHOGONALISE = 0.7
#: output-gradient rows computed (and orthonormalised) per chunk, to bound the memory of ``all``
ROWS_PER_CHUNK = 256


def project_out(rows: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """One Gram-Schmidt pass: ``rows`` minus their components along the orthonormal rows of ``blocks``."""
    for block in blocks:
        rows = rows - (rows @ block.T) @ block
    return rows


def orthonormalise(vectors: torch.Tensor, blocks: list[torch.Tensor], limit: int,
                   tolerance: float = RESIDUAL_TOLERANCE) -> tuple[torch.Tensor, int]:
    """Gram-Schmidt of the rows of ``vectors`` against the orthonormal rows of ``blocks``.

    Returns ``(new, n_left_out)``: ``new`` holds orthonormal rows, orthogonal to ``blocks``, spanning
    the rows of ``vectors`` outside their span, at most ``limit`` of them (``n_left_out`` rows were
    not reached). Against the stored blocks a pass is two matrix products over all the rows; within
    ``vectors`` the rows are taken one by one. Rows whose residual is below ``tolerance`` of their
    norm (zero, or already in the span) are dropped.
    """
    norms = vectors.norm(dim=1)
    residual = project_out(vectors, blocks)
    again = residual.norm(dim=1) < REORTHOGONALISE * norms
    if blocks and bool(again.any()):
        residual = residual.clone()
        residual[again] = project_out(residual[again], blocks)
    new = residual.new_empty(min(limit, len(residual)), residual.shape[1])
    count = 0
    for i, v in enumerate(residual):
        if count == limit:
            return new, len(residual) - i
        done = new[:count]
        w = v - done.T @ (done @ v)
        if w.norm() < REORTHOGONALISE * v.norm():
            w = w - done.T @ (done @ w)
        size = w.norm()
        if size > tolerance * norms[i]:
            new[count] = w / size
            count += 1
    return new[:count].clone(), 0


@METHODS.register("ogd")
class OGD(Method):
    """Orthogonal Gradient Descent: SGD steps orthogonal to past tasks' stored output gradients."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 1e-3,
        memory_per_task: Annotated[int, AtLeastOne] = 200,
        variant: Literal["gtl", "all", "ave"] = "gtl",
        max_basis: Annotated[int, AtLeastOne] = 4000,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.memory_per_task = memory_per_task
        self.variant = variant
        self.max_basis = max_basis
        self.blocks: list[torch.Tensor] = []  # S = [S_1; S_2; ...]: (k_i, P) orthonormal rows, float32
        self.generator: torch.Generator | None = None  # draws the examples of each task
        self.chosen: dict[int, torch.Tensor] = {}  # task -> indices of its examples used
        self.dropped = 0  # vectors not stored because the basis was full

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.model(x, task_id), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.blocks:
            write_flat_gradient(self.trained, self.project(flat_gradient(self.trained)))
        self.optimizer.step()
        return loss.detach()

    def end_task(self, task: Task) -> None:
        n = len(task.y_train)
        index = torch.randperm(n, generator=self.generator)[: min(self.memory_per_task, n)]
        self.chosen[task.id] = index
        device = self.trained[0].device
        x, y = task.x_train[index].to(device), task.y_train[index].to(device)
        units = self.units(task)
        per_example = max(1, ROWS_PER_CHUNK // (len(units) if self.variant == "all" else 1))
        for start in range(0, len(y), per_example):
            chunk = slice(start, start + per_example)
            rows = self.output_gradients(x[chunk], y[chunk], units, task.id)
            self.extend_basis(rows)

    # ----------------------------------------------------------------------------- projection
    @property
    def basis(self) -> torch.Tensor:
        """``S`` as one ``(k, P)`` matrix (a copy; the method keeps it in blocks, see `extend_basis`)."""
        if not self.blocks:
            return torch.zeros(0, sum(p.numel() for p in self.model.parameters() if p.requires_grad))
        return torch.cat(self.blocks)

    @property
    def basis_size(self) -> int:
        return sum(len(block) for block in self.blocks)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """``g - S'(S g)``: ``g`` without its components along the stored directions."""
        for block in self.blocks:
            g = torch.addmv(g, block.T, block @ g, alpha=-1)
        return g

    def extend_basis(self, rows: torch.Tensor) -> None:
        """Orthonormalise ``rows`` against ``S`` and append what is new, up to ``max_basis`` rows.

        The new rows become a block of their own, so the stored basis is never copied.
        """
        space = self.max_basis - self.basis_size
        if space <= 0:
            self.dropped += len(rows)
            return
        new, left_out = orthonormalise(rows, self.blocks, space)
        self.dropped += left_out
        if len(new):
            self.blocks.append(new)



    # ----------------------------------------------------------------------------- output gradients
    def units(self, task: Task) -> torch.Tensor:
        """Output units whose gradients protect ``task`` (the units it trained)."""
        mask = task.train_mask
        if mask is None:
            return torch.arange(task.layout.n_units, device=self.trained[0].device)
        return mask.nonzero().squeeze(1).to(self.trained[0].device)

    def output_gradients(self, x: torch.Tensor, y: torch.Tensor, units: torch.Tensor,
                         task_id: int) -> torch.Tensor:
        """Rows ``grad_w f(x_i)`` of the variant, one per example (``all``: one per example and unit).

        Flattened in the order of the model's trainable parameters, as ``flat_gradient``.
        """
        params = {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}
        buffers = dict(self.model.named_buffers())

        def outputs(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, (params, buffers), (x[None], task_id))[0]

        def ground_truth(params, x, y):
            return outputs(params, x).gather(0, y[None])[0]

        def average(params, x):
            return outputs(params, x)[units].mean()

        def own_units(params, x):
            return outputs(params, x)[units]

        was_training = self.model.training
        self.model.eval()
        try:
            if self.variant == "gtl":
                grads = vmap(grad(ground_truth), in_dims=(None, 0, 0))(params, x, y)
            elif self.variant == "ave":
                grads = vmap(grad(average), in_dims=(None, 0))(params, x)
            else:
                grads = vmap(jacrev(own_units), in_dims=(None, 0))(params, x)
        finally:
            self.model.train(was_training)
        rows = len(y) * (len(units) if self.variant == "all" else 1)
        return torch.cat([grads[name].reshape(rows, -1) for name in params], dim=1)

    def output_gradients_loop(self, x: torch.Tensor, y: torch.Tensor, units: torch.Tensor,
                              task_id: int) -> torch.Tensor:
        """The same rows as `output_gradients` by one backward pass per output (for tests)."""
        was_training = self.model.training
        self.model.eval()
        rows = []
        for i in range(len(y)):
            logits = self.model(x[i:i + 1], task_id)[0]
            if self.variant == "gtl":
                targets = [logits[y[i]]]
            elif self.variant == "ave":
                targets = [logits[units].mean()]
            else:
                targets = list(logits[units])
            for target in targets:
                grads = torch.autograd.grad(target, self.trained, retain_graph=True, allow_unused=True)
                rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                       for p, g in zip(self.trained, grads, strict=True)]))
        self.model.train(was_training)
        return torch.stack(rows)

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> OGD:
        super().to(device)
        self.blocks = [block.to(device) for block in self.blocks]
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "basis": list(self.blocks),
            "generator": None if self.generator is None else self.generator.get_state(),
            "chosen": dict(self.chosen),
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.blocks = list(state["basis"])
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        self.chosen = dict(state["chosen"])
        self.dropped = int(state["dropped"])

    def memory(self) -> dict[str, int]:
        return {**super().memory(), "basis_vectors": self.basis_size,
                "basis_bytes": tensor_bytes(*self.blocks),
                "basis_capacity": self.max_basis, "basis_dropped": self.dropped}

    def __repr__(self) -> str:
        return (f"OGD(lr={self.lr}, memory_per_task={self.memory_per_task}, variant={self.variant!r}, "
                f"max_basis={self.max_basis})")
