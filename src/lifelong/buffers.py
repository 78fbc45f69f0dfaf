"""Example buffers for replay methods: preallocated tensors of inputs, labels and task ids.

- `ReservoirBuffer(capacity)`: a uniform sample of everything seen so far (Vitter's algorithm R:
  the ``i``-th example, 1-based, is stored with probability ``capacity / i`` in a uniformly chosen
  slot), as in the reservoir memory of Chaudhry et al. (2019), "On Tiny Episodic Memories in
  Continual Learning".
- `TaskRingBuffer(per_task)`: the latest ``per_task`` examples of each task (a first-in first-out
  ring per task; the paper's ring buffer keeps one ring per class instead).

Both store labels as output units (``Task.y_*``) and the task id of every example, add a whole
minibatch at a time without per-example Python work, draw replay minibatches with an explicit
``torch.Generator`` and round-trip through ``state_dict``/``load_state_dict``. Storage is allocated
on the first ``add`` (when the example shape is known), on the device of the examples.
"""

from __future__ import annotations

from typing import Any

import torch


def _task_tensor(task_id: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(task_id, torch.Tensor):
        if task_id.numel() == 1 and n != 1:
            return task_id.reshape(()).expand(n).to(device=device, dtype=torch.long)
        if task_id.shape != (n,):
            raise ValueError(f"task_id has shape {tuple(task_id.shape)}; expected ({n},) or a scalar")
        return task_id.to(device=device, dtype=torch.long)
    return torch.full((n,), int(task_id), dtype=torch.long, device=device)


class _Storage:
    """Preallocated ``x``/``y``/``task`` tensors with ``capacity`` rows (allocated on first use)."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.task: torch.Tensor | None = None

    def allocate(self, rows: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.y = torch.zeros((rows, *y.shape[1:]), dtype=y.dtype, device=y.device)
        self.task = torch.zeros(rows, dtype=torch.long, device=x.device)

    def grow(self, rows: int) -> None:
        """Append ``rows`` empty rows (used when a ring buffer meets a new task)."""
        self.x = torch.cat([self.x, self.x.new_zeros((rows, *self.x.shape[1:]))])
        self.y = torch.cat([self.y, self.y.new_zeros((rows, *self.y.shape[1:]))])
        self.task = torch.cat([self.task, self.task.new_zeros(rows)])

    def write(self, slots: torch.Tensor, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> None:
        self.x[slots] = x
        self.y[slots] = y
        self.task[slots] = task

    def read(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[slots], self.y[slots], self.task[slots]

    @property
    def nbytes(self) -> int:
        if self.x is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.task))

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.y, self.task = state["x"], state["y"], state["task"]


class ReservoirBuffer:
    """A uniform random sample of at most ``capacity`` examples of the whole stream (algorithm R).

    After ``n`` examples have been added, each of them is in the buffer with probability
    ``min(1, capacity / n)``, whatever the task it came from.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be at least 1")
        self.capacity = capacity
        self.seen = 0  # examples offered so far
        self.storage = _Storage()

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor,
            generator: torch.Generator | None = None) -> None:
        """Offer a minibatch: example ``i`` of the stream (1-based) goes to a uniformly drawn slot
        ``j`` in ``[0, i)`` when ``j < capacity`` (directly to slot ``i - 1`` while filling up).

        Within a minibatch, a slot drawn twice keeps the later example, as in the sequential
        algorithm.
        """
        n = len(y)
        if n == 0:
            return
        if self.storage.x is None:
            self.storage.allocate(self.capacity, x, y)
        i = torch.arange(self.seen + 1, self.seen + n + 1, dtype=torch.float64)  # 1-based positions
        draw = torch.rand(n, generator=generator, dtype=torch.float64)
        slots = torch.where(i <= self.capacity, i - 1, torch.floor(draw * i)).long()
        self.seen += n
        rows = (slots < self.capacity).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        slots = slots[rows]
        if len(rows) > 1:  # a slot drawn twice keeps the later example: the last of each run
            order = torch.argsort(slots, stable=True)
            slots, rows = slots[order], rows[order]
            last = torch.ones(len(rows), dtype=torch.bool)
            last[:-1] = slots[1:] != slots[:-1]
            slots, rows = slots[last], rows[last]
        device = x.device
        rows, slots = rows.to(device), slots.to(device)
        task = _task_tensor(task_id, n, device)[rows] if isinstance(task_id, torch.Tensor) else task_id
        self.storage.write(slots, x[rows], y[rows], task)

    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``min(n, len(self))`` distinct stored examples drawn uniformly: ``(x, y, task_ids)``."""
        size = len(self)
        if size == 0:
            raise ValueError("cannot sample from an empty buffer; add examples first")
        slots = torch.randperm(size, generator=generator)[:n]
        return self.storage.read(slots.to(self.storage.x.device))

    def all(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every stored example, in slot order."""
        size = len(self)
        return self.storage.x[:size], self.storage.y[:size], self.storage.task[:size]

    @property
    def nbytes(self) -> int:
        """Bytes of the allocated storage (inputs, labels and task ids of ``capacity`` rows)."""
        return self.storage.nbytes

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seen": self.seen, **self.storage.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
        self.storage.load_state_dict(state)

    def __repr__(self) -> str:
        return f"ReservoirBuffer(capacity={self.capacity}, stored={len(self)}, seen={self.seen})"


class TaskRingBuffer:
    """The latest ``per_task`` examples of every task seen, each task in its own ring of slots.

    Task ``t``'s ring occupies rows ``block[t] * per_task ...`` of the storage, which grows by one
    ring when a new task id arrives. Adding overwrites the oldest entries of the ring first.
    """

    def __init__(self, per_task: int) -> None:
        if per_task < 1:
            raise ValueError(f"per_task={per_task} must be at least 1")
        self.per_task = per_task
        self.blocks: dict[int, int] = {}  # task id -> ring index in the storage
        self.written: dict[int, int] = {}  # task id -> examples added to that task so far
        self.storage = _Storage()

    def __len__(self) -> int:
        return sum(self.filled(t) for t in self.blocks)

    def filled(self, task_id: int) -> int:
        """How many examples of task ``task_id`` are stored."""
        return min(self.written.get(task_id, 0), self.per_task)

    def add(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor,
            generator: torch.Generator | None = None) -> None:
        """Write a minibatch into the rings of its tasks (``generator`` unused: nothing is random)."""
        n = len(y)
        if n == 0:
            return
        if isinstance(task_id, torch.Tensor) and task_id.numel() > 1:
            task = _task_tensor(task_id, n, x.device)
            for t in torch.unique(task).tolist():  # one group per task in the batch (few)
                rows = (task == t).nonzero().squeeze(1)
                self._add_one_task(x[rows], y[rows], int(t))
        else:
            self._add_one_task(x, y, int(task_id))

    def _add_one_task(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> None:
        if self.storage.x is None:
            self.storage.allocate(0, x, y)
        if task_id not in self.blocks:
            self.blocks[task_id] = len(self.blocks)
            self.written[task_id] = 0
            self.storage.grow(self.per_task)
        start = self.written[task_id]
        self.written[task_id] += len(y)
        if len(y) > self.per_task:  # only the latest per_task survive
            start += len(y) - self.per_task
            x, y = x[-self.per_task:], y[-self.per_task:]
        offsets = torch.arange(start, start + len(y), device=x.device) % self.per_task
        slots = self.blocks[task_id] * self.per_task + offsets
        self.storage.write(slots, x, y, torch.full((len(y),), task_id, device=x.device))

    def _stored_slots(self) -> torch.Tensor:
        blocks = sorted(self.blocks, key=self.blocks.get)
        return torch.cat([self.blocks[t] * self.per_task + torch.arange(self.filled(t))
                          for t in blocks]) if blocks else torch.zeros(0, dtype=torch.long)

    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``min(n, len(self))`` distinct stored examples drawn uniformly: ``(x, y, task_ids)``."""
        slots = self._stored_slots()
        if len(slots) == 0:
            raise ValueError("cannot sample from an empty buffer; add examples first")
        chosen = slots[torch.randperm(len(slots), generator=generator)[:n]]
        return self.storage.read(chosen.to(self.storage.x.device))

    def all(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every stored example, task by task, each ring in slot order."""
        return self.storage.read(self._stored_slots().to(self.storage.x.device))

    @property
    def nbytes(self) -> int:
        """Bytes of the allocated storage (``per_task`` rows for every task seen)."""
        return self.storage.nbytes

    def state_dict(self) -> dict[str, Any]:
        return {"per_task": self.per_task, "blocks": dict(self.blocks), "written": dict(self.written),
                **self.storage.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_task = int(state["per_task"])
        self.blocks = {int(t): int(b) for t, b in state["blocks"].items()}
        self.written = {int(t): int(c) for t, c in state["written"].items()}
        self.storage.load_state_dict(state)

    def __repr__(self) -> str:
        return f"TaskRingBuffer(per_task={self.per_task}, tasks={len(self.blocks)}, stored={len(self)})"
