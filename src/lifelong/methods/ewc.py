"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, "Overcoming catastrophic
forgetting in neural networks").

After each task ``k`` the method stores the diagonal of the empirical Fisher information of the
task's training data at the learnt parameters ``theta*_k``,

    F_k,i = mean over examples (x, y) of ( d log p(y | x; theta) / d theta_i )^2   at theta*_k,

where ``p(y | x)`` is the softmax over the units the task trains (its own head in task-incremental
streams, the shared head in domain-incremental ones, every unit seen so far in class-incremental
ones). While later tasks train, the loss is the cross-entropy of the minibatch plus the paper's
quadratic penalty

    lamb / 2 * sum_i F_i (theta_i - theta*_i)^2 ,

one SGD step on their sum. Two ways to carry it across many tasks (``variant``):

- ``separate`` (default): one penalty per past task, ``lamb / 2 * sum_k sum_i F_k,i (theta_i -
  theta*_k,i)^2``, as the paper prescribes for a third task onwards and as the GEM code
  (facebookresearch/GradientEpisodicMemory ``model/ewc.py``) does by keeping every task's Fisher and
  parameters. The sum is stored as one quadratic (`penalty.QuadraticAnchor`, ``separate``): the
  same value and gradient in two copies of the parameters instead of ``2k``.
- ``merged``: the HAT code's online EWC (joansj/hat ``src/approaches/ewc.py``): one Fisher, after
  task ``k`` (0-based) the running mean ``F <- (F_new + k * F_old) / (k + 1)`` (every task weighs
  ``1 / (k + 1)``; the code's comment finds it better than ``0.5 * (F_new + F_old)``), and one
  anchor, the parameters after the latest task. Old tasks are pulled toward parameters that have
  already moved away from theirs, and the Fisher keeps the scale of one task (a mean, not a sum).

How the Fisher is estimated (``fisher_samples``, ``fisher_batch``):

- ``fisher_samples`` examples of the task's training set, drawn without replacement by a seeded
  generator kept in the state (``None``: all of them; the GEM code uses the first ``n_memories``
  examples it sees of the task, HAT all of them);
- ``fisher_batch=1`` (default): per-example squared gradients, the Fisher's definition (an
  expectation of squared per-example scores), computed in one vectorised pass
  (`penalty.summed_example_gradients`). ``fisher_batch=B``: the squared gradient of the mean loss of
  consecutive minibatches of ``B`` examples, averaged with weights ``|batch| / n`` (the HAT code,
  ``utils.fisher_matrix_diag``, uses ``B = 20``, weighting its last, shorter batch as a full one);
  ``fisher_batch=None``: one batch of all the samples (the GEM code: the squared gradient of the
  mean loss over its ``n_memories`` examples). A minibatch estimate is not the Fisher: near a
  minimum of the task loss the mean gradient is mostly noise, and the square of a mean of ``B``
  gradients is about ``1/B`` of the mean of their squares. The per-example default keeps ``lamb``
  independent of a batch size; to reproduce HAT or GEM use their batch and their ``lamb`` (HAT:
  ``variant="merged", lamb=5000, fisher_batch=20, lr=0.05``; GEM: below).

Gradients for the Fisher are taken in eval mode (no dropout; the codes of HAT and GEM use train
mode, the same for networks without dropout or batch-norm). HAT's code differentiates its full
criterion, penalty included, but at the new anchor, where the penalty's gradient is zero.

Defaults and where they come from:

- ``variant="separate"``: the paper's formulation (exact for any number of tasks); ``merged`` is the
  cheaper approximation HAT's code chose because it would not keep ``t`` Fishers, which
  ``separate`` here does not need either.
- ``lamb=1`` with the per-example Fisher: the best of a small sweep on the GEM protocol (permuted
  MNIST, 20 tasks of 1000 examples, one epoch, batch 10, MLP 784-100-100-10, ``lr=0.03``, seed 0;
  ACC after the last task, finetune 0.565 with BWT -0.243)::

      separate  lamb=0.3: 0.592   lamb=1: 0.617 (BWT -0.182)   lamb=3: 0.609   lamb=10: 0.549
                lamb=100: 0.098 (diverges: lr * lamb * max F exceeds 2)
      merged    lamb=10: 0.582    lamb=30: 0.599

  With ``separate`` the summed Fisher grows with the tasks (its largest entry went from 0.17
  after the first task to 5.4 after the twentieth at ``lamb=1``), so the largest stable ``lamb``
  falls as the stream grows; `penalty.warn_if_unstable` warns when a task starts beyond it. The
  values of the published codes belong to other Fisher estimates and set-ups: the HAT code's
  ``lamb=5000`` (its grid 500-50000; one value for all its experiments, permuted MNIST included;
  HAT has no rotated MNIST) with the batch-20 Fisher over the whole training set, SGD
  ``lr=0.05`` divided by 3 on validation plateaus, gradient-norm clipping at 100, up to 200
  epochs; the GEM code's
  ``memory_strength`` multiplies ``sum F (theta - theta*)^2`` without the 1/2, so ``lamb = 2 *
  memory_strength``: permuted MNIST ``memory_strength=3``, ``n_memories=10``, ``lr=0.1``; rotated
  MNIST ``memory_strength=1000``, ``n_memories=1000``, ``lr=0.01`` (``run_experiments.sh``), each
  with its one-batch Fisher. Here those are ``lr=0.1, lamb=6, fisher_samples=10,
  fisher_batch=None`` (permuted: ACC 0.594 on the run above) and ``lr=0.01, lamb=2000,
  fisher_samples=1000, fisher_batch=None`` (rotated: 0.551; finetune at the GEM script's
  ``lr=0.003``: 0.536).
- ``lr=0.03``: the GEM script's rate for plain SGD on permuted MNIST, as `finetune`.

Cost: the penalty is one elementwise pass over the parameters per step; after a task, one
gradient per example (or per minibatch) of the chosen samples. Memory: the Fisher and the anchor,
two float32 copies of the trained parameters, whatever the number of tasks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.methods.base import Method
from lifelong.methods.penalty import QuadraticAnchor, summed_example_gradients, trainable, warn_if_unstable
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, NonNegative, Positive


@METHODS.register("ewc")
class EWC(Method):
    """Elastic Weight Consolidation: a Fisher-weighted quadratic pull toward past tasks' weights."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        lamb: Annotated[float, NonNegative] = 1.0,
        variant: Literal["separate", "merged"] = "separate",
        fisher_samples: Annotated[int, AtLeastOne] | None = None,
        fisher_batch: Annotated[int, AtLeastOne] | None = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.lamb = lamb
        self.variant = variant
        self.fisher_samples = fisher_samples
        self.fisher_batch = fisher_batch
        self.consolidated: QuadraticAnchor | None = None
        self.generator: torch.Generator | None = None  # draws the Fisher samples

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if self.variant not in ("separate", "merged"):
            raise ValueError(f"variant={self.variant!r} is not one of 'separate', 'merged'")
        if self.lamb < 0:
            raise ValueError(f"lamb={self.lamb} must be >= 0")
        super().begin_task(task)
        self.params = trainable(self.model)
        if self.consolidated is None:
            self.consolidated = QuadraticAnchor("separate" if self.variant == "separate" else "mean")
            self.generator = torch.Generator().manual_seed(self.seed)
        warn_if_unstable("ewc", self.lr, self.lamb * self.consolidated.max_importance(), "lamb")

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.model(x, task_id), y)
        self.step(loss + self.penalty() if self.consolidated.active else loss)
        return loss.detach()

    def end_task(self, task: Task) -> None:
        self.consolidated.consolidate(self.params, self.fisher(task))

    # ----------------------------------------------------------------------------- EWC
    def penalty(self) -> torch.Tensor:
        """``lamb / 2 * sum_i F_i (theta_i - theta*_i)^2`` (summed over past tasks for ``separate``)."""
        return self.lamb / 2 * self.consolidated.penalty(self.params)

    def fisher_examples(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples the Fisher of ``task`` is estimated on (see ``fisher_samples``)."""
        x, y = task.x_train, task.y_train
        if self.fisher_samples is not None and self.fisher_samples < len(y):
            index = torch.randperm(len(y), generator=self.generator)[: self.fisher_samples]
            x, y = x[index], y[index]
        device = next(iter(self.params.values())).device
        return x.to(device), y.to(device)

    def fisher(self, task: Task) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher of ``task`` at the current parameters, by name."""
        x, y = self.fisher_examples(task)
        mask = task.train_mask
        if self.fisher_batch == 1:
            def negative_log_likelihood(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
                return -F.log_softmax(mask_logits(logits, mask), dim=0).gather(0, label[None])[0]

            total = summed_example_gradients(self.model, x, y, negative_log_likelihood,
                                             torch.square, task.id)
            return {name: t / len(y) for name, t in total.items()}
        batch = len(y) if self.fisher_batch is None else self.fisher_batch
        fisher = {name: torch.zeros_like(p) for name, p in self.params.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(y), batch):
                xb, yb = x[start:start + batch], y[start:start + batch]
                loss = F.cross_entropy(mask_logits(self.model(xb, task.id), mask), yb)
                grads = torch.autograd.grad(loss, list(self.params.values()), allow_unused=True)
                for name, g in zip(self.params, grads, strict=True):
                    if g is not None:
                        fisher[name] += len(yb) / len(y) * g.pow(2)
        finally:
            self.model.train(was_training)
        return fisher

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> EWC:
        super().to(device)
        if self.consolidated is not None:
            self.consolidated.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "consolidated": None if self.consolidated is None else self.consolidated.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.consolidated, self.generator = None, None
        if state["consolidated"] is not None:
            self.consolidated = QuadraticAnchor.from_state(state["consolidated"])
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def memory(self) -> dict[str, int]:
        stored = QuadraticAnchor() if self.consolidated is None else self.consolidated
        return {**super().memory(), **stored.memory("fisher")}

    def __repr__(self) -> str:
        return (f"EWC(lr={self.lr}, lamb={self.lamb}, variant={self.variant!r}, "
                f"fisher_samples={self.fisher_samples}, fisher_batch={self.fisher_batch})")
