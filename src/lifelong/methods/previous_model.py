"""Methods that keep a frozen copy of the network as it was after the previous task (LwF, LFL).

`PreviousModelMethod` owns that copy: it is taken in ``end_task``, kept in eval mode (its outputs
are targets: no dropout), saved in the method's state and counted in its memory.
"""

from __future__ import annotations

import copy

from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no gradients (the previous task's network)."""
    old = copy.deepcopy(model)
    for parameter in old.parameters():
        parameter.requires_grad_(False)
    return old.eval()


class PreviousModelMethod(Method):
    """A `Method` with ``old_model``: the network after the last finished task (None before)."""

    old_model: nn.Module | None = None

    def end_task(self, task: Task) -> None:
        self.old_model = frozen_copy(self.model)

    def networks(self) -> list[nn.Module]:
        return [self.model] + ([self.old_model] if self.old_model is not None else [])

    def set_training(self, mode: bool) -> None:
        self.model.train(mode)
        if self.old_model is not None:
            self.old_model.eval()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["old_model"] = None if self.old_model is None else self.old_model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.old_model = None
        if state["old_model"] is not None:
            self.old_model = frozen_copy(self.model)
            self.old_model.load_state_dict(state["old_model"])

    def memory(self) -> dict[str, int]:
        old = [] if self.old_model is None else list(self.old_model.parameters())
        return {**super().memory(), "old_model_parameters": sum(p.numel() for p in old),
                "old_model_bytes": tensor_bytes(*old)}
