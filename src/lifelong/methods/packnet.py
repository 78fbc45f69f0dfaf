"""PackNet: Mallya & Lazebnik, CVPR 2018, "PackNet: Adding Multiple Tasks to a Single Network by
Iterative Pruning" (official code: github arunmallya/packnet, ``src/prune.py``, ``src/main.py``).

Every weight of the body's linear and conv layers carries the id of the task that owns it (one
byte per weight, the paper's mask; 0 = free). For task ``t``:

1. ``begin_task``: every free weight is handed to task ``t`` (the code's ``make_finetuning_mask``);
   the task trains on the engine's minibatches, and the gradient of every weight owned by an
   earlier task is zeroed before each step (``make_grads_zero``), so those never move.
2. ``end_task``, pruning (``pruning_mask``): in every layer, of the weights task ``t`` owns, the
   ``round(prune_ratio * n)`` of smallest magnitude are set to zero and freed for later tasks (ties
   broken by position, so exactly that many), the others stay task ``t``'s.
3. Retraining: ``retrain_epochs`` epochs over ``task.x_train`` in minibatches of
   ``retrain_batch_size`` (order drawn from a generator seeded with ``seed``, whose state is
   saved), at ``retrain_lr``, updating only task ``t``'s kept weights (freed ones stay zero).
   Afterwards task ``t``'s weights are frozen for good.

Biases are shared and not pruned: they train with task 0 and are frozen afterwards (the code's
default ``train_biases=False``). At test time task ``t`` uses only the weights of tasks ``<= t``
(the others are zeroed, ``apply_mask``) and its own classifier: the head's rows for the task's
units are saved when the task ends (the paper keeps one classifier per task; in the domain
scenario the one shared head goes on training from task to task and each task keeps its copy).
Tasks not trained yet use all trained weights and the current head (before the first task, the
untrained model). Only the body's ``nn.Linear``/``nn.Conv2d`` layers are pruned (batch norm and
other layers with parameters or buffers are not supported), so ``mlp`` and ``conv`` models work.

Defaults: ``prune_ratio=0.75``, the official scripts' ratio for each added task (50% for the
ImageNet network they start from); ``retrain_epochs=10`` (``--post_prune_epochs 10``) at
``retrain_lr = lr / 10`` (``--lr 1e-3`` for training, ``1e-4`` after pruning);
``retrain_batch_size=32`` (the code's ``--batch_size``); the last task of a stream is not pruned
(``prune_last_task=False``: the scripts give it a ratio of -1, for which ``main.py`` does
nothing, so it keeps all free weights).
The code trains with SGD and momentum 0.9 from a pretrained VGG-16; here plain SGD at ``lr=0.03``
as `finetune` (the GEM protocol). PackNet is not among the HAT paper's baselines.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, Fraction, NonNegative, Positive

MAX_TASKS = 255  # owners are stored as one byte per weight


@METHODS.register("packnet")
class PackNet(Method):
    """Train on the free weights, prune the task's smallest, retrain the rest, freeze them."""

    task_conditioned = True
    task_agnostic = False

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.03,
        prune_ratio: Annotated[float, Fraction] = 0.75,
        retrain_epochs: Annotated[int, NonNegative] = 10,
        retrain_batch_size: Annotated[int, AtLeastOne] = 32,
        retrain_lr: Annotated[float, Positive] | None = None,
        prune_last_task: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.prune_ratio = prune_ratio
        self.retrain_epochs = retrain_epochs
        self.retrain_batch_size = retrain_batch_size
        self.retrain_lr = retrain_lr
        self.prune_last_task = prune_last_task
        self.owners: dict[str, torch.Tensor] | None = None  # body weight name -> owner (task + 1)
        self.heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # task -> head rows (W, b)
        self.head_units: dict[int, list[int]] = {}
        self.generator: torch.Generator | None = None
        self._prunable: dict[str, torch.Tensor] | None = None
        self._shared: list[torch.Tensor] = []

    # ----------------------------------------------------------------------------- structure
    def prunable(self) -> dict[str, torch.Tensor]:
        """The body's linear and conv weights by name (anything else with parameters is refused)."""
        if self._prunable is None:
            weights = {}
            for name, module in self.model.body.named_modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    weights[f"{name}.weight" if name else "weight"] = module.weight
                elif any(True for _ in module.parameters(recurse=False)) or any(
                        True for _ in module.buffers(recurse=False)):
                    raise ValueError("packnet prunes bodies of nn.Linear and nn.Conv2d layers; "
                                     f"got {type(module).__name__}")
            kept = {id(w) for w in weights.values()}
            self._shared = [p for p in self.model.body.parameters() if id(p) not in kept]
            self._prunable = weights
        return self._prunable

    def shared(self) -> list[torch.Tensor]:
        """Body parameters that are not pruned (biases): trained by task 0 only."""
        self.prunable()
        return self._shared

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if task.layout.scenario == "class":
            raise ValueError("packnet needs the task id at test time, which the class-incremental "
                             "scenario does not give; use scenario=task or scenario=domain")
        if task.id >= MAX_TASKS:
            raise ValueError(f"packnet stores one byte per weight: at most {MAX_TASKS} tasks, "
                             f"got task {task.id}")
        if self.owners is None:
            self.owners = {n: torch.zeros_like(w, dtype=torch.uint8) for n, w in self.prunable().items()}
            self.generator = torch.Generator().manual_seed(self.seed)
        for owner in self.owners.values():
            owner[owner == 0] = task.id + 1
        self.optimizer = self.make_optimizer(self.model.parameters())
        super().begin_task(task)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.model(x), y)
        self.masked_step(loss, self.optimizer, task_id)
        return loss.detach()

    def masked_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, task_id: int) -> None:
        """One step that moves only task ``task_id``'s weights (and shared ones during task 0)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            weights = self.prunable()
            for name, owner in self.owners.items():
                grad = weights[name].grad
                if grad is not None:
                    grad.masked_fill_(owner != task_id + 1, 0.0)
            if task_id > 0:
                for parameter in self.shared():
                    parameter.grad = None
        optimizer.step()

    def end_task(self, task: Task) -> None:
        last = task.id == task.layout.n_tasks - 1
        if self.prune_last_task or not last:
            self.prune(task.id)
            self.retrain(task)
        units = list(task.layout.task_units[task.id])
        head = self.model.head
        self.heads[task.id] = (head.weight.detach()[units].clone(), head.bias.detach()[units].clone())
        self.head_units[task.id] = units

    @torch.no_grad()
    def prune(self, task_id: int) -> None:
        """In each layer, free the ``round(prune_ratio * n)`` smallest of task ``task_id``'s ``n`` weights."""
        weights = self.prunable()
        for name, owner in self.owners.items():
            flat_owner, flat_weight = owner.view(-1), weights[name].view(-1)
            own = (flat_owner == task_id + 1).nonzero().squeeze(1)
            n_prune = round(self.prune_ratio * len(own))
            order = torch.argsort(flat_weight[own].abs(), stable=True)
            drop = own[order[:n_prune]]
            flat_owner[drop] = 0
            flat_weight[drop] = 0.0

    def retrain(self, task: Task) -> None:
        """``retrain_epochs`` epochs on the task's training data, only its kept weights moving."""
        if self.retrain_epochs == 0:
            return
        device = next(self.model.parameters()).device
        x, y = task.x_train.to(device), task.y_train.to(device)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.retrain_lr or self.lr / 10)
        for _ in range(self.retrain_epochs):
            order = torch.randperm(len(y), generator=self.generator).to(device)
            for index in order.split(self.retrain_batch_size):
                self.masked_step(self.loss(self.model(x[index]), y[index]), optimizer, task.id)

    @torch.no_grad()
    def features(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        """The body's output using only the weights of tasks ``<= task_id``."""
        weights = self.prunable()
        masked = {
            name: torch.where((owner >= 1) & (owner <= task_id + 1), weights[name], 0.0)
            for name, owner in self.owners.items()
        }
        return functional_call(self.model.body, masked, (x,))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("packnet needs the task id to choose the task's weights")
        if self.owners is None:
            return self.model(x)
        features = self.features(x, task_id)
        logits = self.model.head(features)
        if task_id in self.heads:
            weight, bias = self.heads[task_id]
            logits[:, self.head_units[task_id]] = F.linear(features, weight, bias)
        return logits

    def to(self, device: torch.device | str) -> PackNet:
        super().to(device)
        if self.owners is not None:
            self.owners = {name: owner.to(device) for name, owner in self.owners.items()}
        self.heads = {t: (w.to(device), b.to(device)) for t, (w, b) in self.heads.items()}
        return self

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["owners"] = None if self.owners is None else {k: v.clone() for k, v in self.owners.items()}
        state["heads"] = {t: (w.clone(), b.clone()) for t, (w, b) in self.heads.items()}
        state["head_units"] = {t: list(u) for t, u in self.head_units.items()}
        state["generator"] = None if self.generator is None else self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.task_id = state["task_id"]
        device = next(self.model.parameters()).device
        self.owners = None if state["owners"] is None else {
            k: v.to(device).clone() for k, v in state["owners"].items()}
        self.heads = {int(t): (w.to(device).clone(), b.to(device).clone())
                      for t, (w, b) in state["heads"].items()}
        self.head_units = {int(t): list(u) for t, u in state["head_units"].items()}
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = self.make_optimizer(self.model.parameters())
            self.optimizer.load_state_dict(state["optimizer"])

    def memory(self) -> dict[str, int]:
        owners = [] if self.owners is None else list(self.owners.values())
        heads = [t for pair in self.heads.values() for t in pair]
        return {
            **super().memory(),
            "mask_values": sum(o.numel() for o in owners),
            "mask_bytes": tensor_bytes(*owners),
            "head_parameters": sum(t.numel() for t in heads),
            "head_bytes": tensor_bytes(*heads),
        }

    def __repr__(self) -> str:
        return f"PackNet(lr={self.lr}, prune_ratio={self.prune_ratio}, retrain_epochs={self.retrain_epochs})"
