"""HAT over Adapter-BERT (``adapter-hat``): the CTR paper's strongest baseline.

Ke et al. (CTR, NeurIPS 2021) and Ke, Xu & Liu (B-CL, NAACL 2021) compare against HAT (Serrà et
al., ICML 2018) applied to the units of Houlsby adapters in a frozen BERT, as the code of github
ZixuanKe/PyContinual does (``networks/base/adapters.py`` ``BertAdapterMask``,
``networks/classification/bert_adapter_mask.py``, ``approaches/classification/
bert_adapter_mask_ncl.py`` with ``approaches/base/bert_adapter_mask_base.py``). Every adapter (after
both projections of every transformer layer, see `lifelong.methods.adapter`) has two gated layers:

- gates: task ``t`` has an embedding per gated layer, ``e_down^t`` (``adapter_size`` values) and
  ``e_up^t`` (hidden-size values), drawn from N(0, 1) (the code's ``nn.Embedding``) from
  ``(seed, t)``; HAT Eq. 1, ``a^t = sigmoid(s e^t)``, and the adapter computes
  ``h + a_up^t * up(a_down^t * f(down(h)))`` (the code's ``get_feature``);
- annealing, HAT Eq. 3: within every epoch batch ``b`` of ``B`` uses
  ``s = 1/smax + (smax - 1/smax) (b - 1) / (B - 1)``; predictions use ``s = smax`` (the code's
  ``s = (smax - 1/smax) b / B + 1/smax`` never quite reaches ``smax``; the paper's form is used, as
  by `lifelong.methods.hat`);
- cumulative attention after task ``t`` (HAT Eq. 2): ``a^{<=t} = max(a^{<=t-1}, a^t)`` at ``smax``;
- gradient blocking (the code's ``get_view_for``): the gradient of ``down.weight[i, j]`` and
  ``down.bias[i]`` is multiplied by ``1 - a_down,i^{<=t-1}`` (its input, the hidden state, is not
  gated); that of ``up.weight[i, j]`` by ``1 - min(a_up,i^{<=t-1}, a_down,j^{<=t-1})`` and of
  ``up.bias[i]`` by ``1 - a_up,i^{<=t-1}``;
- embedding-gradient compensation, HAT Eq. 5: the gradient of ``e`` is multiplied by
  ``smax (cosh(clamp(s e, ±thres_cosh)) + 1) / (s (cosh(e) + 1))``; after every step the
  embeddings are clamped to ``±thres_emb``; gradients are clipped to norm ``clipgrad``;
- regulariser, HAT Eq. 6 (the code's ``hat_criterion_adapter``), added to the cross-entropy:
  ``c * sum a^t (1 - a^{<=t-1}) / sum (1 - a^{<=t-1})`` over every gate of every adapter (first
  task: ``c`` times the mean gate).

Defaults (PyContinual ``bert_adapter_mask_base.py`` and ``config.py``): ``smax=400``,
``thres_cosh=50``, ``thres_emb=6``, ``c=0.75`` (``lamb``), ``clipgrad=10000``, ``adapter_size=2000``,
``lr=5e-5`` with Adam (``BertAdam``) over the adapters, the embeddings, the LayerNorms and the
head, ``weight_decay=0.01``, a fresh optimizer per task, batch 32. The decay is blocked like the
gradients (``BertAdam`` shrinks every weight, protected or not, and the task embeddings too, whose
names lack "bias"; here the embeddings do not decay). The HAT code (joansj/hat) uses
the same ``smax``, ``thres_cosh``, ``thres_emb``, ``clipgrad`` and ``c=0.75`` but plain SGD with
``lr=0.05``. See `lifelong.methods.adapter` for the optimizer's details and what differs.

What HAT guarantees here, and what it does not:

- a weight whose cumulative mask is exactly 1 (in float32: ``s e >~ 17`` for both its units) gets
  a zero gradient and no weight decay, and with a fresh Adam per task it does not move at all;
- Adam normalises the gradient, so a weight that is only partly masked (``0 < 1 - a < 1``) moves
  at nearly the full step size: only saturated masks protect (with SGD, as in the HAT paper, the
  step shrinks with ``1 - a``);
- the LayerNorms are trained and not masked, as in the code (``train_layernorm=True``): they are
  shared by all tasks and drift, so old tasks' predictions change. With ``train_layernorm=False``
  and binary task masks (all gates exactly 0 or 1), task ``t``'s predictions are bit-identical
  after later tasks train (task scenario: each task has its own head units);
- in the domain scenario the one head is shared and unprotected (the code's DIL set-up); the task
  id selects the masks at test time (the engine gives it). The class scenario has no task id and
  is refused.

The encoder must be frozen and have no trainable layers on top of it (``hidden=()``): the code's
network feeds BERT's pooled output straight to the heads, and such layers would be unprotected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.methods.adapter import Adapter, HoulsbyAdapter
from lifelong.methods.base import tensor_bytes
from lifelong.methods.hat import THRES_COSH, annealed_s, compensate_, sparsity
from lifelong.methods.registry import METHODS
from lifelong.models.plugins import PluginSlot
from lifelong.models.transformer import TextNetwork
from lifelong.params import AtLeastOne, NonNegative, Positive
from lifelong.seeding import mix_seed


class MaskedAdapter(HoulsbyAdapter):
    """``h + a_up * up(a_down * f(down(h)))`` with the gates the method sets before each forward."""

    def __init__(self, width: int, size: int, activation: str = "relu", init_std: float = 1e-3) -> None:
        super().__init__(width, size, activation, init_std)
        self.gates: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, h: torch.Tensor, task_id: Any = None) -> torch.Tensor:
        if self.gates is None:
            raise RuntimeError("MaskedAdapter has no gates: adapter-hat sets them before each forward")
        down, up = self.gates
        return h + up * self.up(down * self.bottleneck(h))


@METHODS.register("adapter-hat")
class AdapterHAT(Adapter):
    """HAT task masks on the units of Houlsby adapters in a frozen BERT (CTR's HAT baseline)."""

    task_conditioned = True
    task_agnostic = False

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 5e-5,
        adapter_size: Annotated[int, AtLeastOne] = 2000,
        activation: Literal["relu", "gelu"] = "relu",
        init_std: Annotated[float, Positive] = 1e-3,
        train_layernorm: bool = True,
        weight_decay: Annotated[float, NonNegative] = 0.01,
        smax: Annotated[float, Positive] = 400.0,
        c: Annotated[float, NonNegative] = 0.75,
        thres_emb: Annotated[float, Positive] = 6.0,
        thres_cosh: Annotated[float, Positive] = THRES_COSH,
        clipgrad: Annotated[float, Positive] = 10000.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, adapter_size, activation, init_std, train_layernorm,
                         weight_decay, seed)
        if smax < 1:
            raise ValueError(f"smax={smax} must be at least 1 (s is annealed from 1/smax to smax)")
        self.smax = smax
        self.c = c
        self.thres_emb = thres_emb
        self.thres_cosh = thres_cosh
        self.clipgrad = clipgrad
        self.embeddings: dict[int, list[torch.Tensor]] = {}  # task -> [e_down, e_up] per adapter
        self.cumulative: list[torch.Tensor] | None = None  # a^{<=t-1}, same layout
        self.s = 1.0 / smax
        self._batch = 0
        self._n_batches = 1
        self._gradient_masks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, 1 - view)

    # ----------------------------------------------------------------------------- structure
    def make_plugin(self, layer: int, kind: str, width: int) -> nn.Module:
        return MaskedAdapter(width, self.adapter_size, self.activation, self.init_std)

    def setup(self) -> list[PluginSlot]:
        if self.slots is None and isinstance(self.model, TextNetwork):
            top = [n for n, _ in self.model.body.named_parameters() if not n.startswith("0.")]
            if top:
                raise ValueError("adapter-hat protects only the adapters; the model has layers on top "
                                 f"of the encoder ({top[0]}, ...): build it with hidden=()")
        return super().setup()

    def embedding(self, task_id: int) -> list[torch.Tensor]:
        """Task ``task_id``'s embeddings ``[e_down, e_up]`` per adapter, N(0, 1) from ``(seed, t)``."""
        if task_id not in self.embeddings:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, task_id))
            device = self.model.head.weight.device
            values = []
            for slot in self.setup():
                for units in (slot.plugin.down.out_features, slot.plugin.up.out_features):
                    values.append(torch.randn(units, generator=generator).to(device).requires_grad_())
            self.embeddings[task_id] = values
        return self.embeddings[task_id]

    def attention(self, task_id: int, s: float) -> list[torch.Tensor]:
        """``a^t = sigmoid(s e^t)`` for every gated layer (HAT Eq. 1)."""
        return [torch.sigmoid(s * e) for e in self.embedding(task_id)]

    def set_gates(self, gates: list[torch.Tensor]) -> None:
        for k, slot in enumerate(self.setup()):
            slot.plugin.gates = (gates[2 * k], gates[2 * k + 1])

    def parameter_views(self, masks: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(parameter, mask on its entries)`` for every adapter parameter (the code's get_view_for)."""
        views = []
        for k, slot in enumerate(self.setup()):
            down, up = masks[2 * k], masks[2 * k + 1]
            adapter = slot.plugin
            views += [(adapter.down.weight, down[:, None].expand_as(adapter.down.weight)),
                      (adapter.down.bias, down),
                      (adapter.up.weight, torch.minimum(up[:, None], down[None, :])),
                      (adapter.up.bias, up)]
        return views

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.optimizer = self.make_optimizer([*self.trained().values(), *self.embedding(task.id)])
        self._gradient_masks = [] if self.cumulative is None else [
            (p, 1.0 - view) for p, view in self.parameter_views(self.cumulative)]
        blocked = {id(p): mask for p, mask in self._gradient_masks}
        self._decay = [(p, blocked.get(id(p), mask)) for p, mask in self._decay]

    def begin_epoch(self, epoch: int, n_batches: int) -> None:
        self._batch, self._n_batches = 0, n_batches

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        self.s = annealed_s(self._batch, self._n_batches, self.smax)
        self._batch += 1
        gates = self.attention(task_id, self.s)
        self.set_gates(gates)
        logits = self.model(x, task_id)
        loss = (F.cross_entropy(mask_logits(logits, self.train_mask), y)
                + self.c * sparsity(gates, self.cumulative))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        embeddings = self.embedding(task_id)
        with torch.no_grad():
            for p, mask in self._gradient_masks:
                if p.grad is not None:
                    p.grad.mul_(mask)
        compensate_(embeddings, self.s, self.smax, self.thres_cosh)
        torch.nn.utils.clip_grad_norm_([*self.trained().values(), *embeddings], self.clipgrad)
        self.apply_step()
        with torch.no_grad():
            for e in embeddings:
                e.clamp_(-self.thres_emb, self.thres_emb)
        return loss.detach()

    def end_task(self, task: Task) -> None:
        with torch.no_grad():
            final = [a.detach().clone() for a in self.attention(task.id, self.smax)]
        self.cumulative = (final if self.cumulative is None else
                           [torch.maximum(old, new) for old, new in zip(self.cumulative, final, strict=True)])

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("adapter-hat needs the task id to choose its attention masks")
        if isinstance(task_id, torch.Tensor):
            raise ValueError("adapter-hat predicts one task at a time; pass an int task id")
        self.set_gates(self.attention(int(task_id), self.smax))
        return self.model(x, task_id)

    # ----------------------------------------------------------------------------- monitoring
    def report(self) -> dict[str, Any]:
        """Per transformer layer, the fraction of adapter units in use (cumulative attention > 0.5),
        and the fraction of adapter weights with both ends in use."""
        if self.cumulative is None:
            return {}
        in_use = [a > 0.5 for a in self.cumulative]
        capacity: dict[str, list[int]] = {}
        used = total = 0
        for k, slot in enumerate(self.setup()):
            down, up = in_use[2 * k], in_use[2 * k + 1]
            counts = capacity.setdefault(f"layer{slot.layer}", [0, 0])
            counts[0] += int(down.sum() + up.sum())
            counts[1] += down.numel() + up.numel()
            width = slot.plugin.down.in_features
            used += int(down.sum()) * (width + 1) + int(up.sum()) * (int(down.sum()) + 1)
            total += down.numel() * (width + 1) + up.numel() * (down.numel() + 1)
        return {"capacity": {name: n / d for name, (n, d) in capacity.items()},
                "weight_capacity": used / total}

    # ----------------------------------------------------------------------------- state
    @torch.no_grad()
    def validation_penalty(self) -> float:
        """``c`` times Eq. 6 at ``s = smax`` (the code's validation loss includes the regulariser)."""
        return float(self.c * sparsity(self.attention(self.task_id, self.smax), self.cumulative))

    def weights(self) -> list[torch.Tensor]:
        own = self.embedding(self.task_id) if self.task_id >= 0 else []
        return [*super().weights(), *own]

    def to(self, device: torch.device | str) -> AdapterHAT:
        self.model.to(device)
        self.embeddings = {t: [e.detach().to(device).requires_grad_() for e in es]
                           for t, es in self.embeddings.items()}
        if self.cumulative is not None:
            self.cumulative = [a.to(device) for a in self.cumulative]
        return self

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(embeddings={t: [e.detach().clone() for e in es] for t, es in self.embeddings.items()},
                     cumulative=self.cumulative)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cumulative = state["cumulative"]
        self.embeddings = {int(t): [e.clone().requires_grad_() for e in es]
                           for t, es in state["embeddings"].items()}

    def memory(self) -> dict[str, int]:
        facts = super().memory()
        embeddings = [e for es in self.embeddings.values() for e in es]
        facts.update(embedding_values=sum(e.numel() for e in embeddings),
                     embedding_bytes=tensor_bytes(*embeddings),
                     mask_bytes=tensor_bytes(*(self.cumulative or [])))
        return facts

    def __repr__(self) -> str:
        return (f"AdapterHAT(lr={self.lr}, adapter_size={self.adapter_size}, smax={self.smax}, "
                f"c={self.c}, train_layernorm={self.train_layernorm})")
