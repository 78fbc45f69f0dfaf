"""Fine-tuning: plain SGD on each task in turn ("single" in GEM, "SGD" in HAT).

The lower bound of continual learning: no mechanism against forgetting. Default learning rate
0.03, the GEM script's for permuted MNIST; ``optimizer="adam"`` is BERT's Adam, with which the text
papers fine-tune a whole encoder (NCL; `lifelong.methods.optimizers`).
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from lifelong.methods.base import Method
from lifelong.methods.optimizers import OptimizerName
from lifelong.methods.registry import METHODS
from lifelong.params import Positive


@METHODS.register("finetune")
class Finetune(Method):
    """Plain SGD on the current task only (the forgetting lower bound)."""

    def __init__(self, model: nn.Module, lr: Annotated[float, Positive] = 0.03,
                 optimizer: OptimizerName = "sgd", seed: int = 0) -> None:
        super().__init__(model, lr, seed)
        self.optimizer_name = optimizer
