"""GEM: Gradient Episodic Memory (Lopez-Paz & Ranzato, NeurIPS 2017), as in the official code.

Every task keeps an episodic memory ``M_k`` of ``n_memories`` of its training examples. At each
step, on the minibatch of the current task ``t``:

- the gradient ``g_k = grad l(f_theta, M_k)`` of every past task ``k < t`` on its whole memory
  (task-incremental streams: each memory example scored over its own task's units, as the official
  code's output offsets; class-incremental: over every unit seen so far; domain: all units);
- the gradient ``g`` of the current minibatch's loss;
- if some ``<g, g_k> < 0`` (the step would increase task ``k``'s memory loss to first order), ``g``
  is replaced by the closest gradient ``g~`` (in squared norm) with every ``<g~, g_k> >= 0``, found
  through the paper's dual QP (``G`` = rows ``g_k``)::

      min_v 1/2 v'(GG' + eps I)v + (Gg)'v   s.t.  v >= memory_strength,      g~ = G'v* + g

  solved with ``quadprog`` in float64 exactly as the official ``project2cone2``: the paper's dual
  has ``v >= 0`` and adds a small margin ``gamma >= 0`` to ``v*`` ("memory strength"), which the
  code poses as the lower bound ``v >= gamma``; ``eps = 1e-3`` on the diagonal keeps ``GG'``
  positive definite;
- one SGD step along ``g~``.

Details matched to the official ``model/gem.py`` and ``run_experiments.sh``:

- memory filling: one ring counter over slots ``0..n_memories-1``, shared by all tasks and never
  reset at a task boundary; each minibatch is copied into task ``t``'s slots from the counter on,
  as far as the end of the ring (the rest of that minibatch is not stored), and the counter wraps
  to 0 there. So a task's memory holds (about) its last ``n_memories`` examples of the stream the
  engine feeds (shuffled minibatches, as the official ``Continuum``). Unlike the official code, a
  task that saw fewer than ``n_memories`` examples has its loss over only the slots it wrote (the
  official code would read uninitialised memory);
- defaults of the permuted/rotated MNIST runs: ``lr=0.1``, ``n_memories=256``,
  ``memory_strength=0.5``; ``eps=1e-3`` from ``project2cone2``;
- the violation test ``<g, g_k> < 0`` is made on the float32 gradients; the QP and ``G'v + g`` in
  float64, the result copied back into float32 gradients.

The past-task gradients dominate the cost (``t`` forward/backward passes over ``n_memories``
examples per step). They are computed in one call, ``torch.func.vmap`` over tasks of the gradient
of the masked memory loss (``functional_call``): the same arithmetic as a loop of backward passes
(tests compare to 1e-6), batched into a few large kernels (``benchmarks/gem_speed.py`` measures
both). With a single past task, and for models with batch-norm layers, the loop is used.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import quadprog
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong.benchmarks.stream import MASK_FILL, Task
from lifelong.methods.base import Method, flat_gradient, tensor_bytes, write_flat_gradient
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, NonNegative, Positive


def solve_dual(gradient: torch.Tensor, memories: torch.Tensor, margin: float = 0.5,
               eps: float = 1e-3) -> torch.Tensor:
    """``v*``, the solution of GEM's dual QP as the official ``project2cone2`` poses it.

    ``gradient`` is ``g`` (``p``,), ``memories`` is ``G`` (``t, p``), one past task's gradient a row;
    ``v* = argmin 1/2 v'(GG' + eps I)v + (Gg)'v`` subject to ``v >= margin``, in float64. Raises
    ``ValueError`` when ``GG' + eps I`` is not positive definite (``eps=0`` with linearly dependent
    rows).
    """
    g = gradient.detach().cpu().double()
    rows = memories.detach().cpu().double()
    t = rows.shape[0]
    gram = rows @ rows.T
    gram = 0.5 * (gram + gram.T) + eps * torch.eye(t, dtype=torch.float64)
    try:  # quadprog minimises 1/2 x'Px - a'x subject to C'x >= b
        v = quadprog.solve_qp(gram.numpy(), -(rows @ g).numpy(), np.eye(t), np.full(t, float(margin)))[0]
    except ValueError as error:
        raise ValueError(f"GEM's QP could not be solved ({error}) with eps={eps}; past-task gradients "
                         "can be linearly dependent, use eps > 0 (the official 1e-3)") from error
    return torch.from_numpy(v)


def project_to_cone(gradient: torch.Tensor, memories: torch.Tensor, margin: float = 0.5,
                    eps: float = 1e-3) -> torch.Tensor:
    """GEM's projected gradient ``g~ = G'v* + g`` (float64, on the CPU)."""
    g = gradient.detach().cpu().double()
    rows = memories.detach().cpu().double()
    return solve_dual(g, rows, margin, eps) @ rows + g


def memory_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy over the written slots (``weight`` 1) of one memory, logits masked."""
    if mask is not None:
        logits = logits.masked_fill(~mask, MASK_FILL)
    losses = F.cross_entropy(logits, y, reduction="none")
    return (losses * weight).sum() / weight.sum()


@METHODS.register("gem")
class GEM(Method):
    """Gradient Episodic Memory: project the step so no past task's memory loss increases."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.1,
        n_memories: Annotated[int, AtLeastOne] = 256,
        memory_strength: Annotated[float, NonNegative] = 0.5,
        eps: Annotated[float, NonNegative] = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.n_memories = n_memories
        self.memory_strength = memory_strength
        self.eps = eps
        self.memory_x: dict[int, torch.Tensor] = {}  # task -> (n_memories, *input shape)
        self.memory_y: dict[int, torch.Tensor] = {}  # task -> (n_memories,) output units
        self.written: dict[int, torch.Tensor] = {}  # task -> (n_memories,) bool: slot filled
        self.ring = 0  # the official ``mem_cnt``: next slot, shared by all tasks

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.id not in self.memory_x:
            device = next(self.model.parameters()).device
            self.memory_x[task.id] = torch.zeros((self.n_memories, *task.x_train.shape[1:]),
                                                 dtype=task.x_train.dtype, device=device)
            self.memory_y[task.id] = torch.zeros(self.n_memories, dtype=torch.long, device=device)
            self.written[task.id] = torch.zeros(self.n_memories, dtype=torch.bool, device=device)
        self.past = [k for k in self.memory_x if k != task.id]
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        if self.past:  # past memories are fixed while this task trains: stack them once
            self.past_x = torch.stack([self.memory_x[k] for k in self.past])
            self.past_y = torch.stack([self.memory_y[k] for k in self.past])
            self.past_weight = torch.stack([self.written[k] for k in self.past]).float()
            masks = [task.layout.replay_mask(k, task.id) for k in self.past]
            self.past_masks = None if masks[0] is None else torch.stack(masks).to(device=self.past_x.device)
        self.batched = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        self.remember(x, y, task_id)
        past = self.past_gradients() if self.past else None
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        if past is not None:
            g = flat_gradient(self.trained)
            if bool((past @ g < 0).any()):
                write_flat_gradient(self.trained, project_to_cone(g, past, self.memory_strength, self.eps))
        self.optimizer.step()
        return loss.detach()

    # ----------------------------------------------------------------------------- memory
    def remember(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> None:
        """The official ring: copy as much of the batch as fits before the ring's end, then wrap."""
        end = min(self.ring + len(y), self.n_memories)
        stored = end - self.ring
        self.memory_x[task_id][self.ring:end] = x[:stored]
        self.memory_y[task_id][self.ring:end] = y[:stored]
        self.written[task_id][self.ring:end] = True
        self.ring = 0 if end == self.n_memories else end

    # ----------------------------------------------------------------------------- gradients
    def past_gradients(self) -> torch.Tensor:
        """``G``: one row per past task, the gradient of its memory's loss (``t, p``)."""
        if not self.batched or len(self.past) == 1:  # one task: nothing to batch, skip vmap's overhead
            return self.past_gradients_loop()
        return self.past_gradients_batched()

    def past_gradients_batched(self) -> torch.Tensor:
        """``G`` in one call: ``vmap`` over past tasks of the gradient of the memory loss."""
        params = {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}
        buffers = dict(self.model.named_buffers())

        def task_loss(params, x, y, weight, mask):
            logits = functional_call(self.model, (params, buffers), (x,))
            return memory_loss(logits, y, weight, mask)

        mask_dim = None if self.past_masks is None else 0
        grads = vmap(grad(task_loss), in_dims=(None, 0, 0, 0, mask_dim), randomness="different")(
            params, self.past_x, self.past_y, self.past_weight, self.past_masks)
        return torch.cat([grads[name].reshape(len(self.past), -1) for name in params], dim=1)

    def past_gradients_loop(self) -> torch.Tensor:
        """The same ``G`` by one backward pass per past task (the official code's loop)."""
        rows = []
        for i in range(len(self.past)):
            mask = None if self.past_masks is None else self.past_masks[i]
            loss = memory_loss(self.model(self.past_x[i]), self.past_y[i], self.past_weight[i], mask)
            grads = torch.autograd.grad(loss, self.trained, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for p, g in zip(self.trained, grads, strict=True)]))
        return torch.stack(rows)


    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        memory = {"x": dict(self.memory_x), "y": dict(self.memory_y), "written": dict(self.written),
                  "ring": self.ring}
        return {**super().state_dict(), "memory": memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        memory = state["memory"]
        self.memory_x, self.memory_y = dict(memory["x"]), dict(memory["y"])
        self.written, self.ring = dict(memory["written"]), int(memory["ring"])

    def memory(self) -> dict[str, int]:
        held = [*self.memory_x.values(), *self.memory_y.values()]
        return {**super().memory(), "stored_examples": sum(int(w.sum()) for w in self.written.values()),
                "stored_bytes": tensor_bytes(*held)}

    def __repr__(self) -> str:
        return (f"GEM(lr={self.lr}, n_memories={self.n_memories}, "
                f"memory_strength={self.memory_strength}, eps={self.eps})")
