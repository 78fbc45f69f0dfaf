"""HAT: Hard Attention to the Task (Serrà, Surís, Miron & Karatzoglou, ICML 2018), as in joansj/hat.

Every hidden layer ``l`` has a task embedding ``e_l^t`` (one value per unit or conv channel, drawn
from N(0, 1) like the official ``nn.Embedding``); its attention multiplies the layer's units:

- Eq. 1, gate: ``a_l^t = sigmoid(s * e_l^t)``; at test time ``s = smax``.
- Eq. 3, annealing: within every epoch, batch ``b`` of ``B`` uses
  ``s = 1/smax + (smax - 1/smax) (b - 1) / (B - 1)`` (the official code uses ``b/B`` in samples,
  never quite reaching ``smax``; the paper's form is used here).
- Eq. 2, cumulative attention after task ``t``: ``a_l^{<=t} = max(a_l^t, a_l^{<=t-1})`` at ``smax``.
- Weight-gradient conditioning: the gradient of weight ``w_ij`` of layer ``l`` (unit ``i``, input
  ``j``) is multiplied by ``1 - min(a_{l,i}^{<=t-1}, a_{l-1,j}^{<=t-1})`` (first layer and biases: by
  ``1 - a_{l,i}^{<=t-1}``), so weights that past tasks attend to do not move. The heads are one block
  of output units per task, which other tasks' losses never touch.
- Eq. 5, embedding-gradient compensation: ``q_l^t`` is multiplied by
  ``smax (cosh(clamp(s e, ±50)) + 1) / (s (cosh(e) + 1))``; after every step the embeddings are
  clamped to ``±thres_emb`` (6).
- Eq. 6, sparsity (attention) regulariser added to the cross-entropy:
  ``c * sum_l sum_i a_{l,i}^t (1 - a_{l,i}^{<=t-1}) / sum_l sum_i (1 - a_{l,i}^{<=t-1})``
  (first task: the mean attention). Gradients are clipped to norm ``clipgrad`` (10000) as the code.

Defaults are the paper's and the official code's: ``smax=400``, ``c=0.75``, SGD ``lr=0.05``, no
momentum. The official training loop also decays the learning rate on a validation plateau and
restores the best epoch; the engine here trains a fixed number of epochs instead.

Monitoring (`report`, recorded per task in ``result.json``): ``capacity``, per layer the fraction of
units whose cumulative attention exceeds 0.5; ``weight_capacity``, the same for weights (both ends
in use); ``weight_reuse[i][j]``, the percentage of task ``i``'s weights (binary mask ``a^i > 0.5`` on
both ends) that task ``j`` also uses. Compression: each task's binary mask prunes the network to its
sub-network; ``compression`` lists per task the fraction of body weights it keeps and the test
accuracy of that pruned network (measured once, when the task ends, as its weights never move
again), and `HAT.export_task` returns the pruned model as a plain `Network`.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.registry import METHODS
from lifelong.models.gated import GatedNetwork
from lifelong.models.network import Network
from lifelong.params import NonNegative, Positive
from lifelong.seeding import mix_seed

THRES_COSH = 50.0


def annealed_s(batch: int, n_batches: int, smax: float) -> float:
    """Eq. 3: ``1/smax`` at the first batch of an epoch (``batch=0``), ``smax`` at the last."""
    if n_batches <= 1:
        return smax
    return 1.0 / smax + (smax - 1.0 / smax) * batch / (n_batches - 1)


def sparsity(gates: list[torch.Tensor], cumulative: list[torch.Tensor] | None) -> torch.Tensor:
    """Eq. 6 without ``c``: attention on the units still free, over the number of free units."""
    if cumulative is None:
        return sum(a.sum() for a in gates) / sum(a.numel() for a in gates)
    free = [1.0 - a for a in cumulative]
    return sum((a * f).sum() for a, f in zip(gates, free, strict=True)) / sum(f.sum() for f in free)


def compensation(e: torch.Tensor, s: float, smax: float, thres_cosh: float = THRES_COSH) -> torch.Tensor:
    """Eq. 5's factor for the embeddings' gradients: ``smax (cosh(clamp(s e)) + 1) / (s (cosh(e) + 1))``."""
    return smax / s * (torch.cosh(torch.clamp(s * e, -thres_cosh, thres_cosh)) + 1.0) / (torch.cosh(e) + 1.0)


@torch.no_grad()
def compensate_(embeddings: list[torch.Tensor], s: float, smax: float,
                thres_cosh: float = THRES_COSH) -> None:
    """Eq. 5 on the embeddings' gradients, in place."""
    for e in embeddings:
        if e.grad is not None:
            e.grad.mul_(compensation(e, s, smax, thres_cosh))


@METHODS.register("hat")
class HAT(Method):
    """Task-gated units with annealed hard attention; past tasks' weights are frozen by their masks."""

    task_conditioned = True
    task_agnostic = False

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.05,
        smax: Annotated[float, Positive] = 400.0,
        c: Annotated[float, NonNegative] = 0.75,
        thres_emb: Annotated[float, Positive] = 6.0,
        clipgrad: Annotated[float, Positive] = 10000.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        if smax < 1:
            raise ValueError(f"smax={smax} must be at least 1 (s is annealed from 1/smax to smax)")
        self.smax = smax
        self.c = c
        self.thres_emb = thres_emb
        self.clipgrad = clipgrad
        self.net: GatedNetwork | None = None
        self.embeddings: dict[int, list[torch.Tensor]] = {}  # task -> e_l^t per layer
        self.cumulative: list[torch.Tensor] | None = None  # a^{<=t-1} per layer (None before task 0)
        self.task_masks: dict[int, list[torch.Tensor]] = {}  # a^t > 0.5 per finished task
        self.compression: dict[int, dict[str, float]] = {}
        self.s = 1.0 / smax
        self._batch = 0
        self._n_batches = 1
        self._gradient_masks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, 1 - view)

    # ----------------------------------------------------------------------------- structure
    def gated(self, input_shape: tuple[int, ...]) -> GatedNetwork:
        """The gated view of ``model`` (built on first use, once the input shape is known)."""
        if self.net is None:
            self.net = GatedNetwork(self.model, input_shape)
        return self.net

    def embedding(self, task_id: int) -> list[torch.Tensor]:
        """Task ``task_id``'s embeddings, one vector per gated layer, drawn N(0, 1) from ``(seed, t)``."""
        if task_id not in self.embeddings:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, task_id))
            device = self.model.head.weight.device
            self.embeddings[task_id] = [
                torch.randn(layer.units, generator=generator).to(device).requires_grad_()
                for layer in self.net.layers
            ]
        return self.embeddings[task_id]

    def attention(self, task_id: int, s: float) -> list[torch.Tensor]:
        """``a_l^t = sigmoid(s e_l^t)`` for every gated layer (Eq. 1)."""
        return [torch.sigmoid(s * e) for e in self.embedding(task_id)]

    def annealed_s(self, batch: int, n_batches: int) -> float:
        """Eq. 3: ``1/smax`` at the first batch of an epoch, ``smax`` at the last."""
        return annealed_s(batch, n_batches, self.smax)

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        self.gated(tuple(task.x_train.shape[1:]))
        self.layout, self.task_id, self.train_mask = task.layout, task.id, task.train_mask
        self.optimizer = self.make_optimizer([*self.model.parameters(), *self.embedding(task.id)])
        parameters = dict(self.model.named_parameters())
        self._gradient_masks = [] if self.cumulative is None else [
            (parameters[name], 1.0 - view)
            for name, view in self.net.parameter_views(self.cumulative).items()]

    def begin_epoch(self, epoch: int, n_batches: int) -> None:
        self._batch, self._n_batches = 0, n_batches

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        self.s = self.annealed_s(self._batch, self._n_batches)
        self._batch += 1
        gates = self.attention(task_id, self.s)
        logits = self.net(x, gates)
        loss = F.cross_entropy(mask_logits(logits, self.train_mask), y) + self.c * self.sparsity(gates)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._condition_gradients(task_id)
        torch.nn.utils.clip_grad_norm_([*self.model.parameters(), *self.embedding(task_id)], self.clipgrad)
        self.optimizer.step()
        with torch.no_grad():
            for e in self.embedding(task_id):
                e.clamp_(-self.thres_emb, self.thres_emb)
        return loss.detach()

    def sparsity(self, gates: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 6 without ``c``: attention on units still free, over the number of free units."""
        return sparsity(gates, self.cumulative)

    @torch.no_grad()
    def _condition_gradients(self, task_id: int) -> None:
        """Freeze what past tasks attend to (weights) and compensate the embeddings (Eq. 5)."""
        for p, mask in self._gradient_masks:
            if p.grad is not None:
                p.grad.mul_(mask)
        compensate_(self.embedding(task_id), self.s, self.smax)

    def end_task(self, task: Task) -> None:
        with torch.no_grad():
            final = [a.detach().clone() for a in self.attention(task.id, self.smax)]
        self.cumulative = (final if self.cumulative is None else
                           [torch.maximum(old, new) for old, new in zip(self.cumulative, final, strict=True)])
        self.task_masks[task.id] = [a > 0.5 for a in final]
        self.compression[task.id] = {
            "weights_kept": self.net.weight_count(self.task_masks[task.id]) / self.net.body_weight_total(),
            "pruned_accuracy": self._pruned_accuracy(task),
        }

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("hat needs the task id to choose its attention masks")
        return self.gated(tuple(x.shape[1:]))(x, self.attention(task_id, self.smax))

    # ----------------------------------------------------------------------------- compression
    def binary_gates(self, task_id: int) -> list[torch.Tensor]:
        return [m.float() for m in self.task_masks[task_id]]

    @torch.no_grad()
    def _pruned_accuracy(self, task: Task, batch_size: int = 1000) -> float:
        """Test accuracy of task ``task``'s sub-network (units with attention above 0.5 only)."""
        was_training = self.net.training
        self.net.eval()
        gates, mask, correct = self.binary_gates(task.id), task.layout.eval_mask(task.id), 0
        device = self.model.head.weight.device
        for start in range(0, len(task.y_test), batch_size):
            x = task.x_test[start:start + batch_size].to(device)
            y = task.y_test[start:start + batch_size].to(device)
            correct += int((mask_logits(self.net(x, gates), mask).argmax(1) == y).sum())
        self.net.train(was_training)
        return correct / max(1, len(task.y_test))

    def export_task(self, task_id: int) -> Network:
        """Task ``task_id``'s pruned network: only its units, and its own output units (in order)."""
        if task_id not in self.task_masks:
            raise ValueError(f"task {task_id} has not been trained; trained: {sorted(self.task_masks)}")
        if self.layout is None:
            raise ValueError("export_task needs the stream's layout: load the state, then call "
                             "begin_task or set `layout`")
        units = list(self.layout.task_units[task_id])
        network = self.net.pruned(self.task_masks[task_id], units)
        network.eval()
        return network

    # ----------------------------------------------------------------------------- monitoring
    def report(self) -> dict[str, Any]:
        if self.cumulative is None:
            return {}
        in_use = [a > 0.5 for a in self.cumulative]
        names = [f"layer{number + 1}" for number in range(len(self.net.layers))]
        capacity = {name: float(m.float().mean()) for name, m in zip(names, in_use, strict=True)}
        weight_capacity = self.net.weight_count(in_use) / self.net.body_weight_total()
        return {
            "capacity": capacity,
            "weight_capacity": weight_capacity,
            "weight_reuse": self.weight_reuse(),
            "compression": [{"task": t, **self.compression[t]} for t in sorted(self.compression)],
        }

    def weight_reuse(self) -> list[list[float | None]]:
        """``[i][j]``: percentage of task ``i``'s weights that task ``j`` also uses (tasks so far)."""
        tasks = sorted(self.task_masks)
        matrix = []
        for i in tasks:
            own = self.net.weight_count(self.task_masks[i])
            matrix.append([None if own == 0 else
                           100.0 * self.net.weight_count(self.task_masks[i], self.task_masks[j]) / own
                           for j in tasks])
        return matrix

    # ----------------------------------------------------------------------------- state
    def networks(self) -> list[nn.Module]:
        return [self.model]

    @torch.no_grad()
    def validation_penalty(self) -> float:
        """``c`` times Eq. 6 at ``s = smax``: the HAT code's validation loss includes the regulariser."""
        return float(self.c * self.sparsity(self.attention(self.task_id, self.smax)))

    def weights(self) -> list[torch.Tensor]:
        """The network's and the current task's embeddings (what a validation schedule restores)."""
        own = self.embedding(self.task_id) if self.net is not None and self.task_id >= 0 else []
        return [*super().weights(), *own]

    def to(self, device: torch.device | str) -> HAT:
        self.model.to(device)
        self.embeddings = {t: [e.detach().to(device).requires_grad_() for e in es]
                           for t, es in self.embeddings.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "embeddings": {t: [e.detach().clone() for e in es] for t, es in self.embeddings.items()},
            "cumulative": self.cumulative,
            "task_masks": self.task_masks,
            "input_shape": None if self.net is None else self.net.input_shape,
            "compression": self.compression,
            "task_id": self.task_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.task_id = state["task_id"]
        self.cumulative = state["cumulative"]
        self.task_masks = {int(t): masks for t, masks in state["task_masks"].items()}
        self.compression = {int(t): facts for t, facts in state["compression"].items()}
        self.embeddings = {int(t): [e.clone().requires_grad_() for e in es]
                           for t, es in state["embeddings"].items()}
        if state.get("input_shape") is not None:
            self.gated(tuple(state["input_shape"]))

    def memory(self) -> dict[str, int]:
        facts = super().memory()
        if self.embeddings:
            embeddings = [e for es in self.embeddings.values() for e in es]
            masks = [m for ms in self.task_masks.values() for m in ms]
            facts.update(embedding_values=sum(e.numel() for e in embeddings),
                         embedding_bytes=tensor_bytes(*embeddings),
                         mask_bytes=tensor_bytes(*(self.cumulative or []), *masks))
        return facts

    def __repr__(self) -> str:
        return f"HAT(lr={self.lr}, smax={self.smax}, c={self.c})"
