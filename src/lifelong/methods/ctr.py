"""CTR: Ke, Liu, Ma, Xu & Shu, "Achieving Forgetting Prevention and Knowledge Transfer in Continual
Learning", NeurIPS 2021; official code github ZixuanKe/PyContinual (``bert_adapter_capsule_mask`` with
``--baseline ctr``: ``networks/base/adapters.py`` ``BertAdapterCapsuleMaskImp`` / ``CapsNetImp`` /
``CapsuleLayerImp``, ``approaches/classification/bert_adapter_capsule_mask.py``,
``approaches/base/bert_adapter_mask_base.py``, ``load_base_args.py``, ``config.py``).

A *CL-plugin* is inserted after both projections of every layer of a frozen BERT (the attention
output and the feed-forward output, before dropout, residual and LayerNorm: Houlsby's adapter
positions, `lifelong.models.plugins.insert_plugins`). Only the plugins and the head train. For
the hidden states ``h`` (``[N, L, d]``) of task ``t`` a plugin computes
``h + g2 * relu(fc2(g1 * relu(fc1(h + KSM(h)))))``:

Knowledge sharing module (KSM), per token:

- task capsule layer (TK-layer): one small capsule per task ``i``,
  ``p_i = squash(f_i(h))`` with ``f_i`` a linear map ``d -> cap_dim`` (the code's
  ``apply_one_layer_shared``) and ``squash(x) = |x|^2 / (1 + |x|^2) * x / |x|``;
- transfer capsule layer (TR-layer), *transfer routing* over the tasks ``i <= t`` (capsules of
  later tasks never enter; the code's lower-triangular ``tsv``):

  - pre-route vectors ``u_{j|i} = p_i W_{ji}`` for the ``n_caps`` transfer capsules ``j``
    (``W_{ji}`` ``cap_dim x cap_dim``, the code's ``route_weights``);
  - similarity estimator: a CNN reads the current task's pre-route vectors ``U_t`` (all ``j``
    concatenated, a sequence of ``L`` positions): ``q = maxpool(relu(conv_K(U_t)))`` for kernel
    widths ``K`` in 3, 4, 5 (100 channels each, padding ``K - 2``), then for every task ``i``
    ``z_i = maxpool(relu(conv'_K(U_i) + W_q q))`` (no padding); ``a_i = W_a z_i`` gives one
    similarity weight per element of every ``u_{j|i}``;
  - task similarity gate: ``delta_i`` is the first component of a hard Gumbel-softmax sample of
    ``W_g z_i`` (two logits: transfer / no transfer), straight-through in training;
  - ``v_j = sum_{i <= t} delta_i a_{ij} * u_{j|i}``, and ``KSM(h) = W_l [v_1 ... v_{n_caps}]``
    (one map ``n_caps * cap_dim -> d`` shared by all tasks, the code's ``larger_as_share``).

Task-specific module (TSM): ``fc1`` (``d -> adapter_size``) and ``fc2`` (``adapter_size -> d``) with
ReLU, their units gated by HAT task masks (Serrà et al., ICML 2018; as in `lifelong.methods.hat`):

- HAT Eq. 1: ``g = sigmoid(s e^t)`` with a task embedding ``e^t`` per gated layer;
- HAT Eq. 3: ``s`` annealed within every epoch from ``1/smax`` (first batch) to ``smax`` (last);
  ``smax`` at test time;
- HAT Eq. 2: after task ``t``, cumulative masks ``g^{<=t} = max(g^t, g^{<=t-1})`` at ``smax``; while
  later tasks train, the gradient of ``fc1`` row ``k`` is multiplied by ``1 - g1_k^{<=t}`` and that of
  ``fc2`` entry ``(m, k)`` by ``1 - min(g2_m^{<=t}, g1_k^{<=t})`` (biases: by their unit's), so units
  past tasks use do not move (the code's ``get_view_for`` / ``mask_back``);
- HAT Eq. 5: the embeddings' gradients are compensated by
  ``smax (cosh(clamp(s e, ±50)) + 1) / (s (cosh(e) + 1))`` and the embeddings clamped to
  ``±thres_emb`` after each step;
- HAT Eq. 6: ``c * sum g (1 - g^{<t}) / sum (1 - g^{<t})`` over every mask of every plugin is added to
  the cross-entropy (first task: the mean of the masks).

What protects old tasks, and what does not: as in the code, only the TSM is masked. The KSM is
shared: while task ``t`` trains, the capsules ``f_i`` and route weights ``W_{.i}`` of earlier tasks
``i < t`` (the code's ``get_view_for_tsv`` multiplies their gradients by ``tsv[t][i] = 1``), the
similarity CNN and ``W_l`` all keep learning, so an old task's output can change through ``h + KSM(h)``
(the paper's transfer). What is guaranteed: the parameters of later tasks (their capsules, route
weights, embeddings, head units) never influence an earlier task's output; units an earlier task
uses fully (mask 1) keep their weights; the encoder and other tasks' head units never change.

Scenarios: task-incremental (multi-head, as the paper). Domain-incremental: one shared head, trained
by every task without protection; the engine gives the task id at test time, so each task is scored
through its own masks and routing (the code's DIL instead picks the last task's id, ``--last_id``,
or the id of lowest entropy, ``--ent_id``). Class-incremental is refused: masks and routing need
the task id.

Defaults (code: ``config.py``, ``load_base_args.py`` for ``ctr``, ``bert_adapter_mask_base.py``):
``lr=5e-5`` with Adam (``--learning_rate``, ``BertAdam``, ``eps=1e-6``), ``weight_decay=0.01`` on
all weights but biases, per-tensor gradient clipping to norm ``max_grad_norm=1`` (``BertAdam``),
a fresh optimizer per task; ``smax=400``, ``c=0.75`` (``lamb``), ``thres_emb=6``, ``thres_cosh=50``
(as the HAT code joansj/hat, which trains with SGD, lr 0.05 and global clipping at 10000 instead);
``adapter_size=2000`` (``--bert_adapter_size``), ``cap_dim=3`` (``--semantic_cap_size``),
``n_caps=3`` (``--num_semantic_cap``); similarity CNN: kernel widths 3, 4, 5 with 100 channels.
Initialisation as the code gets it from BERT's ``_init_weights``: linear layers and task
embeddings normal(0, 0.02) with zero biases, convolutions PyTorch's default, route weights
normal(0, 1). The code trains with batch 32, 10 epochs per task on ASC and 20 on DSC, 128 tokens and
restores the best validation epoch: engine settings here. Transfer routing has no routing
iterations (B-CL's dynamic routing has 3).

Differences from the code, and why:

- The code reshapes the task capsules ``[N, L * cap_dim, T]`` into ``[N * L, T, cap_dim]`` with
  ``view`` (which mixes tasks and capsule dimensions), squashes over the task axis, and tiles the
  per-example similarities and gates with ``repeat`` in an order that does not match the tokens'
  (so examples of a batch borrow each other's gates). The equations above are implemented instead.
- At test time the gate takes the argmax of its logits (the code also samples Gumbel noise at test
  time, so its predictions are random); in training the noise comes from a generator seeded by
  ``seed`` (saved in checkpoints).
- Only the encoder is frozen here, LayerNorms included; the code also trains the LayerNorms after
  the plugins (shared, unprotected) and leaves BERT's dropout on while training.
- Adam with bias correction (``BertAdam`` has none) and a constant learning rate: the code's
  linear warm-up (10% of the steps) and decay need the total number of steps, which a method does
  not know. The decoupled weight decay skips what the gradient masks protect (``BertAdam`` decays
  masked weights too) and the head units of other tasks (the code has one head module per task).
- ``s`` follows HAT's Eq. 3 (the code uses ``b / B``, never reaching ``smax``); the regulariser
  leaves out the code's mask of the unused ``tsv_capsules.larger`` layer.
- The similarity CNN runs over all ``L`` positions, padding included, as the code (the plugin does
  not see the padding mask); sequences need at least 5 tokens.
- The code classifies BERT's pooled output with dropout 0.1; build the model with
  ``make_model("transformer", ..., pooling="pooler")`` for BERT's pooler.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.hat import annealed_s, compensation, sparsity
from lifelong.methods.optimizers import BERT_ADAM_EPS
from lifelong.methods.registry import METHODS
from lifelong.models.plugins import PluginSlot, insert_plugins
from lifelong.models.transformer import TextNetwork
from lifelong.params import AtLeastOne, NonNegative, Positive
from lifelong.seeding import mix_seed

KERNELS = (3, 4, 5)  # the similarity CNN's kernel widths (the code's ``Ks``)
SIM_CHANNELS = 100  # its channels per kernel width (the code's ``Co``)
INIT_STD = 0.02  # BERT's initializer_range, which the code's plugins get from _init_weights


# --------------------------------------------------------------------------------- the equations
def squash(x: torch.Tensor, dim: int = -1, eps: float = 1e-16) -> torch.Tensor:
    """``|x|^2 / (1 + |x|^2) * x / |x|`` along ``dim`` (``eps`` keeps zero vectors at zero, as the code)."""
    squared = (x * x).sum(dim, keepdim=True) + eps
    return squared / (1.0 + squared) * x / torch.sqrt(squared)


def pre_route(p: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    """``u_{j|i} = p_i W_{ji}``: capsules ``[..., T, c]``, routes ``[T, J, c, c]`` -> ``[..., T, J, c]``."""
    return torch.einsum("...ic,ijcd->...ijd", p, routes)


def transfer_route(u: torch.Tensor, similarity: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``v_j = sum_i delta_i a_{ij} * u_{j|i}`` for every token.

    ``u`` ``[N, L, T, J, c]`` pre-route vectors, ``similarity`` ``[N, T, J, c]`` the weights ``a``,
    ``gate`` ``[N, T]`` the task similarity gates ``delta`` -> ``[N, L, J, c]``.
    """
    weights = gate[:, None, :, None, None] * similarity[:, None]
    return (weights * u).sum(2)


def similarity_gate(logits: torch.Tensor, generator: torch.Generator | None = None,
                    tau: float = 1.0) -> torch.Tensor:
    """``delta``: component 0 of a hard Gumbel-softmax sample of ``logits`` ``[..., 2]``.

    In training (a ``generator`` for the noise) the value is exactly 0 or 1 and the gradient is the
    soft sample's (straight-through, as ``F.gumbel_softmax(hard=True)``); without a generator the
    gate is the argmax of the logits, deterministic.
    """
    if generator is None:
        return (logits.argmax(-1) == 0).to(logits.dtype)
    noise = -torch.empty(logits.shape).exponential_(generator=generator).log()
    soft = F.softmax((logits + noise.to(logits.device, logits.dtype)) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return (hard - soft.detach() + soft)[..., 0]


# --------------------------------------------------------------------------------- the plugin
class Control:
    """What every plugin of one method reads at each forward: the HAT ``s`` and the gate noise."""

    def __init__(self, s: float, generator: torch.Generator) -> None:
        self.s = s
        self.generator = generator


@torch.no_grad()
def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def _torch_default(layer: nn.Conv1d | nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default initialisation (kaiming-uniform ``a=sqrt(5)``: U(±1/sqrt(fan_in))), seeded."""
    bound = 1.0 / math.sqrt(layer.weight[0].numel())
    layer.weight.copy_(torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=generator))
    layer.bias.copy_(torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator))


@torch.no_grad()
def _bert_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """BERT's ``_init_weights`` for a linear layer: normal(0, 0.02) weights, zero bias."""
    layer.weight.copy_(_normal(tuple(layer.weight.shape), INIT_STD, generator))
    layer.bias.zero_()


class CTRPlugin(nn.Module):
    """One CL-plugin: the KSM (task capsules and transfer routing) and the HAT-masked TSM.

    Per-task parts (capsule ``f_i``, route weights ``W_{.i}``, TSM embeddings) are added by `grow`,
    each drawn from ``(seed, task)`` alone, so they do not depend on when they are created.
    """

    def __init__(self, width: int, adapter_size: int, cap_dim: int, n_caps: int, control: Control,
                 seed: int) -> None:
        super().__init__()
        self.width, self.adapter_size, self.cap_dim, self.n_caps = width, adapter_size, cap_dim, n_caps
        self.control = control
        self.seed = seed
        routed = n_caps * cap_dim
        pooled = SIM_CHANNELS * len(KERNELS)
        # KSM
        self.capsules = nn.ModuleList()  # f_i: d -> cap_dim, one per task
        self.routes = nn.ParameterList()  # W_{.i}: [n_caps, cap_dim, cap_dim], one per task
        self.convs_current = nn.ModuleList(nn.Conv1d(routed, SIM_CHANNELS, k, padding=k - 2) for k in KERNELS)
        self.convs_task = nn.ModuleList(nn.Conv1d(routed, SIM_CHANNELS, k) for k in KERNELS)
        self.fc_current = nn.Linear(pooled, SIM_CHANNELS)
        self.fc_similarity = nn.Linear(pooled, routed)
        self.fc_gate = nn.Linear(pooled, 2)  # the code's Conv1d(300, 2, 1)
        self.larger = nn.Linear(routed, width)
        # TSM
        self.fc1 = nn.Linear(width, adapter_size)
        self.fc2 = nn.Linear(adapter_size, width)
        self.efc1 = nn.ParameterList()  # task embeddings of fc1's units, one per task
        self.efc2 = nn.ParameterList()  # ... of fc2's units
        self.reset_parameters()

    @property
    def n_tasks(self) -> int:
        return len(self.capsules)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, 0))
        for conv in (*self.convs_current, *self.convs_task):
            _torch_default(conv, generator)
        _torch_default(self.fc_gate, generator)
        for layer in (self.fc_current, self.fc_similarity, self.larger, self.fc1, self.fc2):
            _bert_linear(layer, generator)
        for t in range(self.n_tasks):
            self._draw_task(t)

    @torch.no_grad()
    def _draw_task(self, t: int) -> None:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, 1, t))
        _bert_linear(self.capsules[t], generator)
        self.routes[t].copy_(_normal(tuple(self.routes[t].shape), 1.0, generator))
        self.efc1[t].copy_(_normal((self.adapter_size,), INIT_STD, generator))
        self.efc2[t].copy_(_normal((self.width,), INIT_STD, generator))

    def grow(self, n_tasks: int) -> None:
        """Hold the per-task parts of tasks ``0..n_tasks-1``."""
        device = self.fc1.weight.device
        while self.n_tasks < n_tasks:
            self.capsules.append(nn.Linear(self.width, self.cap_dim).to(device))
            shape = (self.n_caps, self.cap_dim, self.cap_dim)
            self.routes.append(nn.Parameter(torch.empty(shape, device=device)))
            self.efc1.append(nn.Parameter(torch.empty(self.adapter_size, device=device)))
            self.efc2.append(nn.Parameter(torch.empty(self.width, device=device)))
            self._draw_task(self.n_tasks - 1)

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        """The parameters only task ``t`` owns: its capsule, route weights and embeddings."""
        return [*self.capsules[t].parameters(), self.routes[t], self.efc1[t], self.efc2[t]]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters every task uses: the similarity CNN, ``W_l``, ``fc1``, ``fc2``."""
        owned = {id(p) for t in range(self.n_tasks) for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in owned]

    # ------------------------------------------------------------------------- forward
    def gates(self, t: int, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """HAT's masks of ``fc1``'s and ``fc2``'s units for task ``t``: ``sigmoid(s e)``."""
        return torch.sigmoid(s * self.efc1[t]), torch.sigmoid(s * self.efc2[t])

    def pre_route_vectors(self, h: torch.Tensor, t: int) -> torch.Tensor:
        """``u_{j|i}`` of tasks ``i = 0..t`` for every token: ``[N, L, t+1, n_caps, cap_dim]``."""
        n, length, _ = h.shape
        weight = torch.cat([self.capsules[i].weight for i in range(t + 1)])
        bias = torch.cat([self.capsules[i].bias for i in range(t + 1)])
        p = squash(F.linear(h, weight, bias).view(n, length, t + 1, self.cap_dim))
        return pre_route(p, torch.stack(list(self.routes[:t + 1])))

    def similarity(self, u: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The similarity estimator on ``u`` ``[N, L, T, J, c]``: weights ``a`` ``[N, T, J, c]`` and
        gate logits ``[N, T, 2]`` for every task ``i`` against the current task ``t``."""
        n, length, tasks = u.shape[:3]
        if length < max(KERNELS):
            raise ValueError(f"CTR's similarity CNN needs sequences of at least {max(KERNELS)} tokens; "
                             f"got {length}")
        sequences = u.permute(0, 2, 3, 4, 1).reshape(n, tasks, -1, length)  # [N, T, J*c, L]
        current = torch.cat([F.relu(conv(sequences[:, t])).amax(-1) for conv in self.convs_current], 1)
        mixed = self.fc_current(current)[:, None, :, None].expand(n, tasks, -1, 1).reshape(n * tasks, -1, 1)
        flat = sequences.reshape(n * tasks, -1, length)
        z = torch.cat([F.relu(conv(flat) + mixed).amax(-1) for conv in self.convs_task], 1).view(n, tasks, -1)
        return self.fc_similarity(z).view(n, tasks, self.n_caps, self.cap_dim), self.fc_gate(z)

    def knowledge_sharing(self, h: torch.Tensor, t: int, generator: torch.Generator | None) -> torch.Tensor:
        """``KSM(h) = W_l [v_1 ... v_J]`` (``generator``: Gumbel noise for the gates; None: argmax)."""
        u = self.pre_route_vectors(h, t)
        similarity, logits = self.similarity(u, t)
        v = transfer_route(u, similarity, similarity_gate(logits, generator))
        return self.larger(v.flatten(-2))

    def forward(self, h: torch.Tensor, task_id: Any) -> torch.Tensor:
        if task_id is None or (isinstance(task_id, torch.Tensor) and task_id.dim() > 0):
            raise ValueError("CTR's plugins need one int task id per forward (got "
                             f"{'None' if task_id is None else 'per-example ids'})")
        t = int(task_id)
        if not 0 <= t < self.n_tasks:
            raise ValueError(f"task {t} has no CTR plugin parts (tasks 0..{self.n_tasks - 1})")
        generator = self.control.generator if self.training else None
        g1, g2 = self.gates(t, self.control.s)
        hidden = F.relu(self.fc1(h + self.knowledge_sharing(h, t, generator))) * g1
        return h + F.relu(self.fc2(hidden)) * g2

    def extra_repr(self) -> str:
        return (f"width={self.width}, adapter_size={self.adapter_size}, cap_dim={self.cap_dim}, "
                f"n_caps={self.n_caps}, tasks={self.n_tasks}")


# --------------------------------------------------------------------------------- the method
@METHODS.register("ctr")
class CTR(Method):
    """CL-plugins in a frozen BERT: capsules with transfer routing plus HAT-masked task modules."""

    task_conditioned = True
    task_agnostic = False
    #: the model this method needs (`make_model` name): plugins go into a transformer's layers
    requires_model = "transformer"

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 5e-5,
        smax: Annotated[float, Positive] = 400.0,
        c: Annotated[float, NonNegative] = 0.75,
        adapter_size: Annotated[int, AtLeastOne] = 2000,
        cap_dim: Annotated[int, AtLeastOne] = 3,
        n_caps: Annotated[int, AtLeastOne] = 3,
        thres_emb: Annotated[float, Positive] = 6.0,
        weight_decay: Annotated[float, NonNegative] = 0.01,
        max_grad_norm: Annotated[float, Positive] = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        if smax < 1:
            raise ValueError(f"smax={smax} must be at least 1 (s is annealed from 1/smax to smax)")
        self.smax = smax
        self.c = c
        self.adapter_size = adapter_size
        self.cap_dim = cap_dim
        self.n_caps = n_caps
        self.thres_emb = thres_emb
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.control = Control(smax, torch.Generator().manual_seed(mix_seed(seed, 7)))
        self.slots: list[PluginSlot] | None = None
        self.cumulative: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # g^{<=t-1} per plugin
        self.s = 1.0 / smax
        self._batch, self._n_batches = 0, 1
        self._trained: list[nn.Parameter] = []
        self._gradient_masks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._decay: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    # ----------------------------------------------------------------------------- structure
    @property
    def plugins(self) -> list[CTRPlugin]:
        return [] if self.slots is None else [slot.plugin for slot in self.slots]

    def setup(self, n_tasks: int) -> list[CTRPlugin]:
        """Insert the plugins (first call) and give them the parts of tasks ``0..n_tasks-1``."""
        if self.slots is None:
            model = self.model
            if not isinstance(model, TextNetwork):
                raise ValueError(f"ctr puts its plugins into a transformer's layers; got a "
                                 f"{type(model).__name__}: build the model with "
                                 "make_model('transformer', ...)")
            if not model.encoder.frozen:
                raise ValueError("ctr trains its plugins on a frozen encoder; build the model with "
                                 "make_model('transformer', ..., freeze=True)")
            if len(model.body) > 1:
                raise ValueError("ctr classifies the encoder's features directly (the layers on top "
                                 "would be shared and unprotected); build the model with hidden=()")
            self.slots = insert_plugins(model, lambda layer, kind, width: CTRPlugin(
                width, self.adapter_size, self.cap_dim, self.n_caps, self.control,
                mix_seed(self.seed, 2 * layer + (kind == "ffn"))))
        for plugin in self.plugins:
            plugin.grow(n_tasks)
        return self.plugins

    def gates(self, t: int, s: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [plugin.gates(t, s) for plugin in self.plugins]

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if task.layout.scenario == "class":
            raise ValueError("ctr needs the task id at test time (its masks and transfer routing are "
                             "per task); the class-incremental scenario gives none: use scenario=task")
        plugins = self.setup(task.id + 1)
        if task.x_train.dim() != 2 or task.x_train.shape[1] < max(KERNELS):
            raise ValueError(f"ctr reads token ids [N, L] with L >= {max(KERNELS)} (its similarity CNN's "
                             f"widest kernel); got inputs of shape {tuple(task.x_train.shape)}")
        self.layout, self.task_id, self.train_mask = task.layout, task.id, task.train_mask
        t, head = task.id, self.model.head
        trained = {id(p): p for plugin in plugins for p in plugin.shared_parameters()}
        for plugin in plugins:
            for i in range(t):  # earlier tasks' capsules and routes keep learning (the code's tsv)
                trained.update((id(p), p) for p in (*plugin.capsules[i].parameters(), plugin.routes[i]))
            trained.update((id(p), p) for p in plugin.task_parameters(t))
        trained.update((id(p), p) for p in head.parameters())
        self._trained = list(trained.values())
        self.optimizer = self.make_optimizer(self._trained)
        self._gradient_masks = self.gradient_masks()
        protected = {id(p): mask for p, mask in self._gradient_masks}
        rows = (None if self.train_mask is None
                else self.train_mask.to(head.weight.device, head.weight.dtype)[:, None])
        biases = {id(p) for plugin in plugins for m in plugin.modules()
                  if isinstance(m, (nn.Linear, nn.Conv1d)) for p in (m.bias,)} | {id(head.bias)}
        self._decay = [] if self.weight_decay == 0 else [
            (p, rows if p is head.weight else protected.get(id(p)))
            for p in self._trained if id(p) not in biases]

    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(parameters), lr=self.lr, eps=BERT_ADAM_EPS, foreach=True)

    def gradient_masks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(parameter, 1 - view)`` of the TSM weights the cumulative masks protect (HAT Eq. 2)."""
        if self.cumulative is None:
            return []
        masks = []
        for plugin, (c1, c2) in zip(self.plugins, self.cumulative, strict=True):
            masks += [(plugin.fc1.weight, 1.0 - c1[:, None]), (plugin.fc1.bias, 1.0 - c1),
                      (plugin.fc2.weight, 1.0 - torch.minimum(c2[:, None], c1[None, :])),
                      (plugin.fc2.bias, 1.0 - c2)]
        return masks

    def begin_epoch(self, epoch: int, n_batches: int) -> None:
        self._batch, self._n_batches = 0, n_batches

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        if isinstance(task_id, torch.Tensor) and task_id.dim() > 0:
            raise ValueError("ctr trains one task at a time; pass an int task id")
        t = int(task_id)
        self.s = annealed_s(self._batch, self._n_batches, self.smax)
        self._batch += 1
        self.control.s = self.s
        loss = self.loss(self.model(x, t), y) + self.c * self.sparsity(self.gates(t, self.s))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._update(t)
        return loss.detach()

    @torch.no_grad()
    def _update(self, t: int) -> None:
        """Mask (HAT Eq. 2) and compensate (Eq. 5) the gradients, clip each tensor to
        ``max_grad_norm`` (``BertAdam``), decay the weights (decoupled, not what is protected), step,
        clamp the embeddings."""
        for p, mask in self._gradient_masks:
            if p.grad is not None:
                p.grad.mul_(mask)
        for plugin in self.plugins:
            for e in (plugin.efc1[t], plugin.efc2[t]):
                if e.grad is not None:
                    e.grad.mul_(compensation(e, self.s, self.smax))
        for p in self._trained:
            if p.grad is not None:
                norm = torch.linalg.vector_norm(p.grad)
                p.grad.mul_(torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0))
        lr = self.optimizer.param_groups[0]["lr"]
        for p, mask in self._decay:
            p.mul_(1.0 - lr * self.weight_decay * (1.0 if mask is None else mask))
        self.optimizer.step()
        for plugin in self.plugins:
            plugin.efc1[t].clamp_(-self.thres_emb, self.thres_emb)
            plugin.efc2[t].clamp_(-self.thres_emb, self.thres_emb)

    def sparsity(self, gates: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """HAT's Eq. 6 without ``c``: mask on units still free, over the number of free units."""
        cumulative = None if self.cumulative is None else [g for pair in self.cumulative for g in pair]
        return sparsity([g for pair in gates for g in pair], cumulative)

    def end_task(self, task: Task) -> None:
        with torch.no_grad():
            final = [(g1.detach().clone(), g2.detach().clone()) for g1, g2 in self.gates(task.id, self.smax)]
        self.cumulative = final if self.cumulative is None else [
            (torch.maximum(o1, n1), torch.maximum(o2, n2))
            for (o1, o2), (n1, n2) in zip(self.cumulative, final, strict=True)]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("ctr needs the task id to choose its masks and transfer routing")
        if isinstance(task_id, torch.Tensor) and task_id.dim() > 0:
            raise ValueError("ctr predicts one task at a time; pass an int task id")
        self.setup(int(task_id) + 1)
        self.control.s = self.smax
        return self.model(x, int(task_id))

    # ----------------------------------------------------------------------------- monitoring
    def report(self) -> dict[str, Any]:
        """Per plugin, the fraction of ``fc1``'s and ``fc2``'s units past tasks use (mask > 0.5)."""
        if self.cumulative is None:
            return {}
        capacity = {f"layer{slot.layer}.{slot.kind}": {"fc1": float((c1 > 0.5).float().mean()),
                                                        "fc2": float((c2 > 0.5).float().mean())}
                    for slot, (c1, c2) in zip(self.slots, self.cumulative, strict=True)}
        used = sum(int((g > 0.5).sum()) for pair in self.cumulative for g in pair)
        total = sum(g.numel() for pair in self.cumulative for g in pair)
        return {"capacity": capacity, "capacity_total": used / total}

    # ----------------------------------------------------------------------------- state
    @torch.no_grad()
    def validation_penalty(self) -> float:
        """``c`` times Eq. 6 at ``s = smax`` (the code's validation loss includes the regulariser)."""
        return float(self.c * self.sparsity(self.gates(self.task_id, self.smax)))

    def weights(self) -> list[torch.Tensor]:
        """What training changes: the plugins and the head (the encoder is frozen)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def to(self, device: torch.device | str) -> CTR:
        self.model.to(device)
        if self.cumulative is not None:
            self.cumulative = [(c1.to(device), c2.to(device)) for c1, c2 in self.cumulative]
        return self

    def state_dict(self) -> dict[str, Any]:
        # the optimizer is rebuilt for every task (as the code), so checkpoints between tasks need none
        return {
            "model": self.model.state_dict(),
            "n_tasks": self.plugins[0].n_tasks if self.plugins else 0,
            "cumulative": self.cumulative,
            "generator": self.control.generator.get_state(),
            "task_id": self.task_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_tasks"]:
            self.setup(state["n_tasks"])
        self.model.load_state_dict(state["model"])
        device = self.model.head.weight.device
        self.cumulative = None if state["cumulative"] is None else [
            (c1.to(device), c2.to(device)) for c1, c2 in state["cumulative"]]
        self.control.generator.set_state(state["generator"])
        self.task_id = state["task_id"]

    def memory(self) -> dict[str, int]:
        facts = super().memory()
        plugin_parameters = [p for plugin in self.plugins for p in plugin.parameters()]
        embeddings = [e for plugin in self.plugins for e in (*plugin.efc1, *plugin.efc2)]
        masks = [g for pair in (self.cumulative or []) for g in pair]
        trained = [p for p in self.model.parameters() if p.requires_grad]
        facts.update(plugin_parameters=sum(p.numel() for p in plugin_parameters),
                     plugin_bytes=tensor_bytes(*plugin_parameters),
                     embedding_values=sum(e.numel() for e in embeddings),
                     mask_values=sum(g.numel() for g in masks), mask_bytes=tensor_bytes(*masks),
                     trained_parameters=sum(p.numel() for p in trained))
        return facts

    def __repr__(self) -> str:
        return (f"CTR(lr={self.lr}, smax={self.smax}, c={self.c}, adapter_size={self.adapter_size}, "
                f"cap_dim={self.cap_dim}, n_caps={self.n_caps})")
