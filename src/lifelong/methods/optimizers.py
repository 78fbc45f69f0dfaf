"""The optimizers a method can be given by name (its ``optimizer`` parameter).

- ``"sgd"``: plain SGD at the method's ``lr`` (every image protocol: GEM, HAT, A-GEM codes);
- ``"adam"``: BERT's optimizer as the CTR / B-CL codes fine-tune a whole encoder with it
  (``BertAdam``, Devlin et al. 2019; github ZixuanKe/PyContinual): Adam with ``eps=1e-6`` and a
  decoupled weight decay of 0.01 (``p <- p (1 - lr wd)``, as AdamW) on every weight but the biases
  and LayerNorms, found here as the one-dimensional parameters. ``BertAdam`` has no bias correction,
  warms the rate up over the first 10% of the steps and clips each gradient to norm 1; torch's
  AdamW, with bias correction and at a constant rate, stands in for it (as in `lifelong.methods.adapter`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

OptimizerName = Literal["sgd", "adam"]
BERT_ADAM_EPS = 1e-6  # BertAdam's ``e``
BERT_WEIGHT_DECAY = 0.01  # the codes' ``weight_decay`` on all but biases and LayerNorm weights


def build_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``parameters`` at rate ``lr`` (see the module doc)."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if name == "adam":
        params = list(parameters)
        groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": BERT_WEIGHT_DECAY},
                  {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, eps=BERT_ADAM_EPS)
    raise ValueError(f"optimizer={name!r} is not one of 'sgd', 'adam'")
