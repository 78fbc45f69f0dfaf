"""Experience replay (ER): Chaudhry et al., 2019, "On Tiny Episodic Memories in Continual Learning"
(arXiv:1902.10486), Algorithm 1; the replay of Rolnick et al., 2019, for supervised learning.

At every step a replay minibatch ``B_M`` is drawn from the episodic memory ``M`` (uniformly, without
replacement) and one SGD step is taken on the cross-entropy of the union ``B_n ∪ B_M`` with the
current minibatch ``B_n``; then ``B_n`` is written into the memory. Replay starts with the first
task's second minibatch (the memory also holds the current task, as in the paper's code). Each
example's loss is over its ``layout.replay_mask``: its own task's units in task-incremental
streams, every unit seen so far in class-incremental ones, all units in domain-incremental ones.

Memory writing (Sec. 4 of the paper): ``buffer="reservoir"`` keeps a uniform sample of the stream
(`lifelong.buffers.ReservoirBuffer`, ``memory_size`` examples in total); ``buffer="ring"`` the
latest ``memory_size`` examples of each task (`lifelong.buffers.TaskRingBuffer`; the paper's ring
keeps the latest examples of each class).

Defaults: the paper's "tiny" memory of one example per class of each task (``memory_size=None``:
the number of output units of all tasks for the reservoir, the number of units of a task for the
ring; the paper's code sizes the reservoir ``mem_size * num_tasks * classes``), a replay minibatch
as large as the current one (``replay_batch_size=None``; 10 and 10 in the paper's scripts). The
learning rate defaults to 0.03 like `finetune` (the GEM protocol); the paper's scripts use 0.1.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.buffers import ReservoirBuffer, TaskRingBuffer
from lifelong.methods.base import Method
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, Positive


@METHODS.register("replay")
class Replay(Method):
    """Experience replay (ER): each step trains on the minibatch plus a minibatch from memory."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        buffer: Literal["reservoir", "ring"] = "reservoir",
        memory_size: Annotated[int, AtLeastOne] | None = None,
        replay_batch_size: Annotated[int, AtLeastOne] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.buffer = buffer
        self.memory_size = memory_size
        self.replay_batch_size = replay_batch_size
        self.episodic: ReservoirBuffer | TaskRingBuffer | None = None
        self.generator: torch.Generator | None = None
        self.sample_masks: torch.Tensor | None = None

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if self.episodic is None:
            self.episodic = self.make_buffer(task)
            self.generator = torch.Generator().manual_seed(self.seed)
        # row t: the units an example of task t is scored over while this task trains
        masks = task.layout.replay_masks(task.id)
        self.sample_masks = None if masks is None else masks.to(next(self.model.parameters()).device)

    def make_buffer(self, task: Task) -> ReservoirBuffer | TaskRingBuffer:
        units = [len(u) for u in task.layout.task_units]
        if self.buffer == "reservoir":
            return ReservoirBuffer(self.memory_size or sum(units))
        return TaskRingBuffer(self.memory_size or max(units))

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        xb, yb = x, y
        tasks = torch.full((len(y),), task_id, dtype=torch.long, device=y.device)
        if len(self.episodic) > 0:
            xm, ym, tm = self.episodic.sample(self.replay_batch_size or len(y), self.generator)
            xb, yb, tasks = torch.cat([x, xm]), torch.cat([y, ym]), torch.cat([tasks, tm])
        masks = None if self.sample_masks is None else self.sample_masks[tasks]
        loss = F.cross_entropy(mask_logits(self.model(xb), masks), yb)
        self.step(loss)
        self.episodic.add(x, y, task_id, self.generator)
        return loss.detach()

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["episodic"] = None if self.episodic is None else self.episodic.state_dict()
        state["generator"] = None if self.generator is None else self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.episodic, self.generator = None, None
        if state["episodic"] is not None:
            kind = ReservoirBuffer if self.buffer == "reservoir" else TaskRingBuffer
            self.episodic = kind(1)
            self.episodic.load_state_dict(state["episodic"])
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def memory(self) -> dict[str, int]:
        stored = 0 if self.episodic is None else len(self.episodic)
        nbytes = 0 if self.episodic is None else self.episodic.nbytes
        return {**super().memory(), "stored_examples": stored, "stored_bytes": nbytes}
