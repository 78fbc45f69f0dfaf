"""iCaRL: Rebuffi, Kolesnikov, Sperl and Lampert, CVPR 2017, "iCaRL: Incremental Classifier and
Representation Learning".

Features ``φ(x)`` are the network's penultimate layer (``model.features``), L2-normalised, and
every mean of them is re-normalised (Sec. 2.1). For the task ``t`` bringing classes ``s..t``:

- **Representation learning** (Algorithm 3): the training set is the new data ∪ the exemplars
  (``training_data``). Outputs are sigmoids ``g_y(x) = σ(w_y·φ(x))``; the loss is the binary
  cross-entropy over every class seen so far, with one-hot targets ``δ_{y=y_i}`` for the new
  classes and, for the old classes, the targets ``q_i^y = g_y^old(x_i)`` given by the network as
  it was before the task (a frozen copy kept in the state): classification plus distillation.
  Summed over classes, averaged over the minibatch.
- **Exemplar management** (Algorithms 2, 4, 5) after the task: with ``m = K // (classes seen)``,
  each old class keeps its first ``m`` exemplars (ReduceExemplarSet; herding order is priority
  order) and each new class gets ``m`` exemplars chosen by herding (ConstructExemplarSet):
  ``p_k = argmin_x ‖μ - (φ(x) + Σ_{j<k} φ(p_j)) / k‖`` with ``μ`` the class mean of the
  normalised features (not re-normalised here, as in the authors' code), without repeats.
- **Classification** (Algorithm 1, nearest-mean-of-exemplars): ``y* = argmin_y ‖φ(x) - μ_y‖``
  with ``μ_y`` the re-normalised mean of class ``y``'s exemplar features, computed after each
  task. ``predict`` returns ``-‖φ(x) - μ_y‖`` for every unit with exemplars and `NO_MEAN` for
  the others, so the engine's masks and argmax give NME over all seen classes (class-incremental)
  or over a task's classes (task-incremental).

Defaults: ``memory_size=2000`` exemplars in total (the paper's K for CIFAR-100; also the budget
van de Ven & Tolias (2019) gave iCaRL on split MNIST, i.e. 200 per class at the end). The paper
trains a ResNet-32 with lr 2.0 (loss averaged over all 100 outputs), 70 epochs, batch 128; here
the engine's protocol applies and the learning rate defaults to 0.1 with the loss summed over
classes. Units are classes, so the stream's tasks must not share units (split or
class-incremental streams, or task-incremental ones with a head per task).
"""

from __future__ import annotations

import copy
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, Positive

#: the NME logit of a unit without exemplars: far below any -distance (>= -2 for unit vectors),
#: far above the engine's mask fill (-1e10), so masking still excludes units outside a task
NO_MEAN = -1e6


def normalise(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features, dim=-1)


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``features`` (L2-normalised) chosen in order by Algorithm 4.

    Step ``k`` picks the row whose addition brings the mean of the ``k`` chosen rows closest to
    the mean of all rows; a row is chosen at most once; ties go to the lowest index. The distance
    is expanded, ``k²‖μ - (φ + S)/k‖² = ‖kμ - S‖² - 2φ·(kμ - S) + ‖φ‖²``, so each step is one
    matrix-vector product.
    """
    n = len(features)
    if not 0 <= m <= n:
        raise ValueError(f"m={m} exemplars cannot be chosen from {n} examples")
    mu = features.mean(0)
    squared_norms = (features * features).sum(1)
    running = torch.zeros_like(mu)  # S, the sum of the chosen rows
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    chosen = []
    for k in range(1, m + 1):
        score = squared_norms - 2 * (features @ (k * mu - running))
        index = int(score.masked_fill(~available, float("inf")).argmin())
        chosen.append(index)
        available[index] = False
        running += features[index]
    return torch.tensor(chosen, dtype=torch.long)


@METHODS.register("icarl")
class ICaRL(Method):
    """iCaRL: distillation, herding exemplars and nearest-mean-of-exemplars classification."""

    task_conditioned = False
    task_agnostic = True

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.1,
        memory_size: Annotated[int, AtLeastOne] = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.memory_size = memory_size
        # exemplars of every class, each class in herding (priority) order given by ``rank``
        self.exemplar_x: torch.Tensor | None = None
        self.exemplar_y: torch.Tensor | None = None
        self.exemplar_task: torch.Tensor | None = None
        self.exemplar_rank: torch.Tensor | None = None
        self.class_means: torch.Tensor | None = None  # (units, features); rows without exemplars: 0
        self.has_mean: torch.Tensor | None = None  # (units,) bool
        self.old_model: nn.Module | None = None  # the network after the previous task
        self.new_units: torch.Tensor | None = None
        self.old_units: torch.Tensor | None = None

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        layout = task.layout
        if not layout.disjoint:
            raise ValueError("icarl needs tasks with their own output units (split streams, or "
                             "scenario=task with a head per task); this stream's tasks share units")
        if self.memory_size < layout.n_units:
            raise ValueError(f"memory_size={self.memory_size} cannot hold one exemplar for each of "
                             f"the {layout.n_units} classes; use memory_size >= {layout.n_units}")
        super().begin_task(task)
        self.new_units = layout.task_mask(task.id)
        self.old_units = torch.zeros(layout.n_units, dtype=torch.bool)
        for t in range(task.id):
            self.old_units |= layout.task_mask(t)
        if self.exemplar_x is None:  # stored beside the network
            device = next(self.model.parameters()).device
            self.exemplar_x = task.x_train.new_zeros((0, *task.x_train.shape[1:]), device=device)
            self.exemplar_y = torch.zeros(0, dtype=torch.long, device=device)
            self.exemplar_task = torch.zeros(0, dtype=torch.long, device=device)
            self.exemplar_rank = torch.zeros(0, dtype=torch.long, device=device)

    def training_data(self, task: Task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The new data ∪ the exemplars of the old classes, with per-example task ids."""
        x = torch.cat([task.x_train, self.exemplar_x.to(task.x_train.device)])
        y = torch.cat([task.y_train, self.exemplar_y.to(task.y_train.device)])
        ids = torch.cat([torch.full((len(task.y_train),), task.id, dtype=torch.long),
                         self.exemplar_task.cpu()])
        return x, y, ids

    def targets(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Algorithm 3's targets over all units: ``δ_{y=y_i}`` (new classes), ``g^old_y(x_i)`` (old)."""
        targets = F.one_hot(y, self.new_units.numel()).float()
        if self.old_model is not None and bool(self.old_units.any()):
            with torch.no_grad():
                old = torch.sigmoid(self.old_model(x))
            old_units = self.old_units.to(x.device)
            targets[:, old_units] = old[:, old_units]
        return targets

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        seen = (self.new_units | self.old_units).to(x.device)
        logits = self.model(x)[:, seen]
        targets = self.targets(x, y)[:, seen]
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(y)
        self.step(loss)
        return loss.detach()

    @torch.no_grad()
    def end_task(self, task: Task) -> None:
        """Reduce the old classes' exemplar sets, build the new classes' by herding, update means."""
        training = self.model.training
        self.model.eval()
        seen = self.new_units | self.old_units
        m = self.memory_size // int(seen.sum())
        keep = self.exemplar_rank < m  # Algorithm 5: the first m of each class
        parts = [(self.exemplar_x[keep], self.exemplar_y[keep], self.exemplar_task[keep],
                  self.exemplar_rank[keep])]
        device = self.exemplar_x.device
        for unit in self.new_units.nonzero().squeeze(1).tolist():
            x = task.x_train[task.y_train == unit].to(device)
            order = herding(self.features(x), min(m, len(x))).to(x.device)
            parts.append((x[order], torch.full((len(order),), unit, device=x.device),
                          torch.full((len(order),), task.id, device=x.device),
                          torch.arange(len(order), device=x.device)))
        self.exemplar_x, self.exemplar_y, self.exemplar_task, self.exemplar_rank = (
            torch.cat(column) for column in zip(*parts, strict=True))
        self.update_class_means(seen.numel())
        self.old_model = copy.deepcopy(self.model)
        for parameter in self.old_model.parameters():
            parameter.requires_grad_(False)
        self.model.train(training)

    @torch.no_grad()
    def update_class_means(self, n_units: int) -> None:
        """``μ_y``: the re-normalised mean of each class's normalised exemplar features."""
        features = self.features(self.exemplar_x)
        sums = features.new_zeros((n_units, features.shape[1]))
        sums.index_add_(0, self.exemplar_y.to(features.device), features)
        counts = torch.bincount(self.exemplar_y, minlength=n_units)
        self.has_mean = counts > 0
        self.class_means = normalise(sums)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x)``, L2-normalised."""
        return normalise(self.model.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        """Nearest-mean-of-exemplars as logits: ``-‖φ(x) - μ_y‖``, `NO_MEAN` without exemplars."""
        n_units = self.model.head.out_features
        logits = torch.full((len(x), n_units), NO_MEAN, device=x.device)
        if self.has_mean is None:
            return logits
        has_mean = self.has_mean.to(x.device)
        means = self.class_means.to(x.device)[has_mean]
        distance = torch.cdist(self.features(x), means, compute_mode="donot_use_mm_for_euclid_dist")
        logits[:, has_mean] = -distance
        return logits

    # ----------------------------------------------------------------------------- state
    def networks(self) -> list[nn.Module]:
        return [self.model] + ([self.old_model] if self.old_model is not None else [])

    def set_training(self, mode: bool) -> None:
        self.model.train(mode)
        if self.old_model is not None:
            self.old_model.eval()  # distillation targets come from the frozen network

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "exemplars": None if self.exemplar_x is None else {
                "x": self.exemplar_x, "y": self.exemplar_y, "task": self.exemplar_task,
                "rank": self.exemplar_rank},
            "class_means": self.class_means,
            "has_mean": self.has_mean,
            "old_model": None if self.old_model is None else self.old_model.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        exemplars = state["exemplars"]
        if exemplars is None:
            self.exemplar_x = self.exemplar_y = self.exemplar_task = self.exemplar_rank = None
        else:
            self.exemplar_x, self.exemplar_y = exemplars["x"], exemplars["y"]
            self.exemplar_task, self.exemplar_rank = exemplars["task"], exemplars["rank"]
        self.class_means, self.has_mean = state["class_means"], state["has_mean"]
        self.old_model = None
        if state["old_model"] is not None:
            self.old_model = copy.deepcopy(self.model)
            self.old_model.load_state_dict(state["old_model"])
            for parameter in self.old_model.parameters():
                parameter.requires_grad_(False)
            self.old_model.eval()

    def memory(self) -> dict[str, int]:
        if self.exemplar_x is None:
            return {**super().memory(), "stored_examples": 0, "stored_bytes": 0}
        stored = tensor_bytes(self.exemplar_x, self.exemplar_y, self.exemplar_task, self.exemplar_rank)
        if self.class_means is not None:
            stored += tensor_bytes(self.class_means)
        return {**super().memory(), "stored_examples": len(self.exemplar_y), "stored_bytes": stored}
