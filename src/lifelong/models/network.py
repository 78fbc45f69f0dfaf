"""A backbone (``body``) that maps inputs to features, and a linear ``head`` over all output units.

Multi-head and single-head outputs are one mechanism: the head has one unit per (task, class) slot
of the stream's `HeadLayout`, and tasks are scored over their own units (see
`lifelong.benchmarks.stream`). A task-incremental stream with repeating classes therefore gets one
head per task; a domain-incremental stream shares one head.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Network(nn.Module):
    """``head(body(x))``. ``task_id`` is accepted for task-conditioned subclasses and ignored here."""

    def __init__(self, body: nn.Module, head: nn.Linear, seed: int = 0) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.reset_parameters(seed)

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        """The penultimate representation (input of the head)."""
        return self.body(x)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Re-initialise every layer from ``seed`` alone (same seed, same weights).

        Linear layers: Xavier-uniform weights and zero biases, as in the GEM code's ``Xavier``;
        other layers: PyTorch's default initialisation.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    fan_out, fan_in = module.weight.shape
                    bound = math.sqrt(3.0) * math.sqrt(2.0 / (fan_in + fan_out))
                    module.weight.uniform_(-bound, bound)
                    if module.bias is not None:
                        module.bias.zero_()
                elif module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()


@torch.no_grad()
def xavier_(module: nn.Module, generator: torch.Generator) -> None:
    """Xavier-uniform weights and zero biases for every linear/conv layer, drawn from ``generator``."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            receptive = layer.weight[0, 0].numel()
            fan_out, fan_in = layer.weight.shape[0] * receptive, layer.weight.shape[1] * receptive
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.copy_(torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=generator))
            if layer.bias is not None:
                layer.bias.zero_()
