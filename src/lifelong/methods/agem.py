"""A-GEM: Averaged GEM (Chaudhry, Ranzato, Rohrbach & Elhoseiny, ICLR 2019), as in the official code.

GEM's one constraint per past task becomes one constraint on the average loss over the episodic
memory of all past tasks: at each step of task ``t``,

- a reference gradient ``g_ref`` is computed on a random batch of ``reference_batch_size`` examples
  drawn without replacement from the memories of tasks ``0..t-1`` (the whole memory while it holds
  no more than that), each example scored over its own task's units in task-incremental streams
  (``layout.replay_mask``; the official split-benchmark loss), over the units seen so far in
  class-incremental ones, over all units in domain-incremental ones;
- the minibatch gradient ``g`` is projected when it would increase that loss (to first order)::

      g~ = g - (g'g_ref / g_ref'g_ref) g_ref    if g'g_ref < 0,   else g~ = g

- one SGD step along ``g~``; then the minibatch is written into the current task's memory.

The first task is plain SGD. Details matched to the official ``fc_permute_mnist.py`` /
``conv_split_*.py``, ``model/model.py`` and ``replicate_results_iclr19.sh`` (MNIST):

- memory: each task gets ``memories_per_class`` slots for each of its classes (output units; the
  official ``--mem-size``, default 25, i.e. 250 examples per permuted-MNIST task); every class has
  a ring over its slots whose write counter (the official ``count_cls``) is kept per class across
  tasks, so a task's memory holds (about) the last ``memories_per_class`` examples of each of its
  classes. Unlike the official code, slots a task never wrote (a class with fewer examples) are
  not sampled (the official code samples their zeros);
- ``reference_batch_size=256`` (``EPS_MEM_BATCH_SIZE``), ``lr=0.1`` (A-GEM's MNIST learning rate in
  ``replicate_results_iclr19.sh``); the batches are drawn with a seeded generator kept in the state.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.methods.base import Method, flat_gradient, tensor_bytes, write_flat_gradient
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, Positive


def project_away(gradient: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection: ``g - (g.r / r.r) r`` when ``g.r < 0``, else ``g`` unchanged."""
    dot = gradient @ reference
    if dot >= 0:
        return gradient
    return gradient - (dot / (reference @ reference)) * reference


@METHODS.register("agem")
class AGEM(Method):
    """Averaged GEM: project the step so the loss on a random memory batch does not increase."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.1,
        memories_per_class: Annotated[int, AtLeastOne] = 25,
        reference_batch_size: Annotated[int, AtLeastOne] = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.memories_per_class = memories_per_class
        self.reference_batch_size = reference_batch_size
        self.memory_x: dict[int, torch.Tensor] = {}  # task -> (slots, *input shape)
        self.memory_y: dict[int, torch.Tensor] = {}  # task -> (slots,) output units
        self.written: dict[int, torch.Tensor] = {}  # task -> (slots,) bool: slot filled
        self.class_count: torch.Tensor | None = None  # per output unit: next slot of its ring
        self.generator: torch.Generator | None = None  # draws the reference batches

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        device = next(self.model.parameters()).device
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        if self.class_count is None:
            self.class_count = torch.zeros(task.layout.n_units, dtype=torch.long, device=device)
        units = task.layout.task_units[task.id]
        if task.id not in self.memory_x:
            slots = self.memories_per_class * len(units)
            self.memory_x[task.id] = torch.zeros((slots, *task.x_train.shape[1:]),
                                                 dtype=task.x_train.dtype, device=device)
            self.memory_y[task.id] = torch.zeros(slots, dtype=torch.long, device=device)
            self.written[task.id] = torch.zeros(slots, dtype=torch.bool, device=device)
        # a label's class index inside the task (the official ``cls_to_index_map``)
        self.class_index = torch.full((task.layout.n_units,), -1, dtype=torch.long, device=device)
        self.class_index[list(units)] = torch.arange(len(units), device=device)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        # the memories of past tasks are fixed while this task trains: gather them once
        past = [k for k in self.memory_x if k != task.id]
        self.reference_x = self.reference_y = self.reference_mask = None
        if past:
            self.reference_x = torch.cat([self.memory_x[k][self.written[k]] for k in past])
            self.reference_y = torch.cat([self.memory_y[k][self.written[k]] for k in past])
            masks = [task.layout.replay_mask(k, task.id) for k in past]
            if masks[0] is not None:
                counts = torch.tensor([int(self.written[k].sum()) for k in past], device=device)
                self.reference_mask = torch.stack(masks).to(device).repeat_interleave(counts, dim=0)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        reference = self.reference_gradient() if self.reference_x is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        if reference is not None:
            g = flat_gradient(self.trained)
            projected = project_away(g, reference)
            if projected is not g:
                write_flat_gradient(self.trained, projected)
        self.optimizer.step()
        self.remember(x, y, task_id)
        return loss.detach()

    # ----------------------------------------------------------------------------- memory
    def reference_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The whole past memory while it is small enough, else a random subset (no repeats)."""
        n = len(self.reference_y)
        if n <= self.reference_batch_size:
            return self.reference_x, self.reference_y, self.reference_mask
        index = torch.randperm(n, generator=self.generator)[: self.reference_batch_size]
        index = index.to(self.reference_y.device)
        mask = None if self.reference_mask is None else self.reference_mask[index]
        return self.reference_x[index], self.reference_y[index], mask

    def reference_gradient(self) -> torch.Tensor:
        x, y, mask = self.reference_batch()
        loss = F.cross_entropy(mask_logits(self.model(x), mask), y)
        grads = torch.autograd.grad(loss, self.trained)
        return torch.cat([g.reshape(-1) for g in grads])

    def remember(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> None:
        """Write each example at its class's ring position (the official per-example loop, batched).

        Example ``i`` of class ``c`` goes to slot ``m * index(c) + (count[c] + rank_i) % m``, with
        ``rank_i`` its position among the batch's examples of class ``c``; when a batch holds more
        than ``m`` examples of a class only the last ``m`` survive, as in the sequential loop.
        """
        m = self.memories_per_class
        one_hot = F.one_hot(y, len(self.class_count))
        rank = (one_hot.cumsum(0) - 1).gather(1, y[:, None]).squeeze(1)
        in_batch = one_hot.sum(0)
        keep = rank >= in_batch[y] - m
        slots = m * self.class_index[y] + (self.class_count[y] + rank) % m
        slots, rows = slots[keep], keep.nonzero().squeeze(1)
        self.memory_x[task_id][slots] = x[rows]
        self.memory_y[task_id][slots] = y[rows]
        self.written[task_id][slots] = True
        self.class_count = (self.class_count + in_batch) % m


    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        memory = {"x": dict(self.memory_x), "y": dict(self.memory_y), "written": dict(self.written),
                  "class_count": self.class_count}
        generator = None if self.generator is None else self.generator.get_state()
        return {**super().state_dict(), "memory": memory, "generator": generator}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        memory = state["memory"]
        self.memory_x, self.memory_y = dict(memory["x"]), dict(memory["y"])
        self.written, self.class_count = dict(memory["written"]), memory["class_count"]
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def memory(self) -> dict[str, int]:
        held = [*self.memory_x.values(), *self.memory_y.values()]
        return {**super().memory(), "stored_examples": sum(int(w.sum()) for w in self.written.values()),
                "stored_bytes": tensor_bytes(*held)}

    def __repr__(self) -> str:
        return (f"AGEM(lr={self.lr}, memories_per_class={self.memories_per_class}, "
                f"reference_batch_size={self.reference_batch_size})")
