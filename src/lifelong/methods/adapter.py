"""Adapter-BERT continual baselines: NCL (``adapter``) and ONE (``adapter-one``).

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (ICML 2019) put a bottleneck
*adapter* after both projections of every transformer layer (their Fig. 2: after the attention
output projection and after the feed-forward output projection, before the residual connection and
LayerNorm) and train only the adapters, the LayerNorms and the classifier on a frozen BERT:

- adapter: ``A(h) = h + W_up f(W_down h + b_down) + b_up`` with ``W_down`` ``m x d``, ``W_up``
  ``d x m`` (``m`` = ``adapter_size`` << ``d``) and a nonlinearity ``f``;
- near-identity initialisation (Houlsby Sec. 2.1): ``W_down, W_up`` drawn from a normal of std
  ``init_std`` = 1e-3 truncated at two std (google-research/adapter-bert's
  ``adapter_init_scale``), zero biases, so ``A(h) ~ h`` and the network starts as the pretrained one.

The CTR paper (Ke et al., NeurIPS 2021) and B-CL (Ke, Xu & Liu, NAACL 2021) use Adapter-BERT as
continual-learning baselines, with the code of github ZixuanKe/PyContinual
(``networks/base/adapters.py`` ``BertAdapter``, ``networks/classification/bert_adapter.py``,
``approaches/classification/bert_adapter_ncl.py`` / ``bert_adapter_one.py``):

- ``adapter`` (NCL, naive continual learning): one set of adapters (plus LayerNorms and the head)
  trained on every task in turn; nothing protects old tasks.
- ``adapter-one`` (ONE): a fresh adapter set per task, drawn from ``(seed, task)``; the code
  restarts the whole model from its initial copy for each task, so here every task also gets its
  own LayerNorms, its own copy of the head and of any layers on top of the encoder, all started
  from their initial values. Prediction loads task ``t``'s set (it needs the task id); training a
  task never changes another task's predictions (bit-identical).

What trains (as the code's ``bert_adapter`` network): the adapters, the LayerNorms of both
sub-layers of every transformer layer (``attention.output.LayerNorm`` and ``output.LayerNorm``;
``train_layernorm=False`` freezes them), any layers on top of the encoder and the head. The encoder
must be frozen (``make_model("transformer", ..., freeze=True)``, the default). Plugins come from
`lifelong.models.plugins.insert_plugins`, which puts them after the same two projections as
Houlsby and PyContinual.

Defaults and where they come from (PyContinual ``config.py`` / ``load_base_args.py`` and its run
scripts ``commands/til_classification/asc/run_train_bert_adapter_ncl.sh``):

- ``adapter_size=2000`` (``--bert_adapter_size``; Houlsby used 8-256 on BERT-large);
- ``activation="relu"`` (the code's default; ``--use_gelu`` gives Houlsby's GELU);
- ``lr=5e-5`` with Adam (``--learning_rate``, ``BertAdam``), ``weight_decay=0.01`` on every weight
  but biases and LayerNorms (the code's parameter groups), ``eps=1e-6``, a fresh optimizer for
  every task (the code builds one in every ``train(t)``);
- batch size 32 (``--train_batch_size``), 10 epochs per task on ASC, 20 on DSC and newsgroup
  (``load_base_args.py``), the best epoch on validation restored (the engine's validation
  schedule): these are engine settings.

Differences from the code, and why: the code also applies its nonlinearity to the up projection
(``x + f(W_up f(W_down x))``) and initialises the adapters with PyTorch's default (not
near-identity); Houlsby's adapter is used here. ``BertAdam``'s linear warm-up over the first 10% of
all steps and linear decay to zero need the total number of steps, which a method does not know;
the learning rate is constant here. ``BertAdam`` has no bias correction and clips each parameter's
gradient to norm 1; torch's Adam with bias correction is used. The decoupled weight decay
(``p <- p (1 - lr wd)`` before the Adam step, as AdamW / ``BertAdam``) is applied only to the rows
of the head that the current task trains: the code keeps one head module per task and the old
heads get no gradient, so ``BertAdam`` skips them; here all tasks share one ``nn.Linear``. The code
also puts dropout (0.1) on BERT's pooled output; that is the model's choice here
(``make_model("transformer", pooling="pooler", ...)`` gives BERT's pooled output, as the code).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.optimizers import BERT_ADAM_EPS
from lifelong.methods.registry import METHODS
from lifelong.models.plugins import PluginSlot, insert_plugins
from lifelong.models.transformer import TextNetwork
from lifelong.params import AtLeastOne, NonNegative, Positive
from lifelong.seeding import mix_seed

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class HoulsbyAdapter(nn.Module):
    """``h + up(f(down(h)))``, a bottleneck of ``size`` units on a ``width``-wide hidden state.

    Called as a transformer plugin, ``adapter(h, task_id)``; ``task_id`` is ignored.
    """

    def __init__(self, width: int, size: int, activation: str = "relu", init_std: float = 1e-3) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.down = nn.Linear(width, size)
        self.up = nn.Linear(size, width)
        self.activation = ACTIVATIONS[activation]()
        self.init_std = init_std
        self.reset_parameters()

    def draw(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Fresh near-identity values of the parameters: truncated normal(0, init_std) weights
        (cut at two std, as google-research/adapter-bert), zero biases."""
        std = self.init_std
        values = {}
        for name, p in self.named_parameters():
            value = torch.zeros(p.shape)
            if name.endswith("weight"):
                nn.init.trunc_normal_(value, 0.0, std, -2 * std, 2 * std, generator=generator)
            values[name] = value.to(device=p.device, dtype=p.dtype)
        return values

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for name, value in self.draw(generator).items():
            self.get_parameter(name).copy_(value)

    def bottleneck(self, h: torch.Tensor) -> torch.Tensor:
        return self.activation(self.down(h))

    def forward(self, h: torch.Tensor, task_id: Any = None) -> torch.Tensor:
        return h + self.up(self.bottleneck(h))

    def extra_repr(self) -> str:
        return f"width={self.down.in_features}, size={self.down.out_features}"


def layer_norms(model: TextNetwork) -> list[nn.LayerNorm]:
    """The LayerNorms right after the two plugin slots of every transformer layer (Houlsby Fig. 2)."""
    norms = []
    for layer in model.encoder.model.encoder.layer:
        for owner in (layer.attention.output, layer.output):
            norm = getattr(owner, "LayerNorm", None)
            if not isinstance(norm, nn.LayerNorm):
                raise ValueError(f"{type(owner).__name__} has no LayerNorm after its projection")
            norms.append(norm)
    return norms


@METHODS.register("adapter")
class Adapter(Method):
    """Adapter-BERT, NCL: one set of Houlsby adapters on a frozen encoder, trained on every task."""

    task_conditioned = False
    task_agnostic = True
    #: the model this method needs (`make_model` name): adapters go into a transformer's layers
    requires_model = "transformer"

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 5e-5,
        adapter_size: Annotated[int, AtLeastOne] = 2000,
        activation: Literal["relu", "gelu"] = "relu",
        init_std: Annotated[float, Positive] = 1e-3,
        train_layernorm: bool = True,
        weight_decay: Annotated[float, NonNegative] = 0.01,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.adapter_size = adapter_size
        self.activation = activation
        self.init_std = init_std
        self.train_layernorm = train_layernorm
        self.weight_decay = weight_decay
        self.slots: list[PluginSlot] | None = None
        self._decay: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    # ----------------------------------------------------------------------------- structure
    def make_plugin(self, layer: int, kind: str, width: int) -> nn.Module:
        return HoulsbyAdapter(width, self.adapter_size, self.activation, self.init_std)

    def setup(self) -> list[PluginSlot]:
        """Insert the adapters (first call only; drawn from ``(seed, 0)``) and choose what trains."""
        if self.slots is not None:
            return self.slots
        model = self.model
        if not isinstance(model, TextNetwork):
            raise ValueError(f"{self.name} puts adapters into a transformer's layers; got a "
                             f"{type(model).__name__}: build the model with make_model('transformer', ...)")
        if not model.encoder.frozen:
            raise ValueError(f"{self.name} trains adapters on a frozen encoder; build the model "
                             "with make_model('transformer', ..., freeze=True)")
        self.slots = insert_plugins(model, self.make_plugin)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, 0))
        for slot in self.slots:
            slot.plugin.reset_parameters(generator)
        for norm in layer_norms(model):
            norm.requires_grad_(self.train_layernorm)
        return self.slots

    @property
    def name(self) -> str:
        return next((n for n in METHODS.names if METHODS.get(n) is type(self)), type(self).__name__)

    def trained(self) -> dict[str, nn.Parameter]:
        """The parameters training changes: adapters, LayerNorms (if trained), top layers, head."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def plugin_parameters(self) -> list[nn.Parameter]:
        return [p for slot in self.setup() for p in slot.plugin.parameters()]

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        self.setup()
        self.layout, self.task_id, self.train_mask = task.layout, task.id, task.train_mask
        self.optimizer = self.make_optimizer(self.trained().values())
        self._decay = self.decay_masks()

    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(parameters), lr=self.lr, eps=BERT_ADAM_EPS)

    def decay_masks(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(weight, mask)`` for every weight the decoupled decay shrinks (not biases, LayerNorms).

        The head decays only in the rows of the current task's units (``None``: all of it).
        """
        if self.weight_decay == 0:
            return []
        head = self.model.head.weight
        rows = None if self.train_mask is None else self.train_mask.to(head.device, head.dtype)[:, None]
        return [(p, rows if p is head else None) for name, p in self.trained().items()
                if not name.endswith("bias") and "LayerNorm" not in name]

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.apply_step()

    @torch.no_grad()
    def apply_step(self) -> None:
        """Decoupled weight decay ``p <- p (1 - lr wd mask)``, then the Adam step (as AdamW)."""
        lr = self.optimizer.param_groups[0]["lr"]
        for p, mask in self._decay:
            p.mul_(1.0 - lr * self.weight_decay * (1.0 if mask is None else mask))
        self.optimizer.step()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        self.setup()
        return self.model(x, task_id)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        # the optimizer is rebuilt for every task (as the code), so checkpoints between tasks
        # need none
        self.setup()
        return {"model": self.model.state_dict(), "task_id": self.task_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.setup()
        self.model.load_state_dict(state["model"])
        self.task_id = state["task_id"]

    def memory(self) -> dict[str, int]:
        facts = super().memory()
        adapters = self.plugin_parameters()
        trained = list(self.trained().values())
        facts.update(adapter_parameters=sum(p.numel() for p in adapters),
                     adapter_bytes=tensor_bytes(*adapters),
                     trained_parameters=sum(p.numel() for p in trained))
        return facts

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr}, adapter_size={self.adapter_size}, "
                f"activation={self.activation!r}, train_layernorm={self.train_layernorm})")


@METHODS.register("adapter-one")
class AdapterOne(Adapter):
    """Adapter-BERT, ONE: a separate adapter set (with LayerNorms and head copy) per task."""

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
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, adapter_size, activation, init_std, train_layernorm,
                         weight_decay, seed)
        self.sets: dict[int, dict[str, torch.Tensor]] = {}  # task -> its trained tensors
        self.initial: dict[str, torch.Tensor] | None = None  # what a fresh set starts from
        self.loaded: int | None = None  # the task whose set the model holds
        self._dirty = False  # the model's set has changed since it was loaded

    # ----------------------------------------------------------------------------- sets
    def setup(self) -> list[PluginSlot]:
        first = self.slots is None
        slots = super().setup()
        if first and self.initial is None:
            self.initial = self.current()
        return slots

    def current(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trained().items()}

    def fresh(self, task_id: int) -> dict[str, torch.Tensor]:
        """A new set for ``task_id``: adapters drawn from ``(seed, task_id)``, the rest initial."""
        values = {n: t.clone() for n, t in self.initial.items()}
        generator = torch.Generator().manual_seed(mix_seed(self.seed, task_id))
        names = {id(p): n for n, p in self.model.named_parameters()}
        for slot in self.slots:
            prefix = names[id(slot.module.weight)].rsplit(".", 1)[0] + ".plugin."
            values.update({prefix + n: v for n, v in slot.plugin.draw(generator).items()})
        return values

    @torch.no_grad()
    def activate(self, task_id: int) -> None:
        """Make the model hold task ``task_id``'s set (a fresh one if it has none yet)."""
        self.setup()
        if self.loaded == task_id:
            return
        if self._dirty:
            self.sets[self.loaded] = self.current()
            self._dirty = False
        values = self.sets.get(task_id)
        if values is None:
            values = self.fresh(task_id)
        for name, p in self.trained().items():
            p.copy_(values[name])
        self.loaded = task_id

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        self.activate(task.id)
        super().begin_task(task)

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        self.activate(task_id)
        self._dirty = True
        return super().observe(x, y, task_id)

    def end_task(self, task: Task) -> None:
        self.sets[task.id] = self.current()
        self._dirty = False

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("adapter-one needs the task id to choose its adapter set")
        if isinstance(task_id, torch.Tensor):
            raise ValueError("adapter-one predicts one task at a time; pass an int task id")
        self.activate(int(task_id))
        return self.model(x, task_id)

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> AdapterOne:
        self.model.to(device)
        self.sets = {t: {n: v.to(device) for n, v in s.items()} for t, s in self.sets.items()}
        if self.initial is not None:
            self.initial = {n: v.to(device) for n, v in self.initial.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._dirty:
            self.sets[self.loaded] = self.current()
            self._dirty = False
        state.update(sets=self.sets, initial=self.initial, loaded=self.loaded)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sets = {int(t): {n: v.clone() for n, v in s.items()} for t, s in state["sets"].items()}
        self.initial = {n: v.clone() for n, v in state["initial"].items()}
        self.loaded = state["loaded"]
        self._dirty = False

    def memory(self) -> dict[str, int]:
        facts = super().memory()
        stored = [v for s in self.sets.values() for v in s.values()]
        facts.update(task_sets=len(self.sets), set_values=sum(v.numel() for v in stored),
                     set_bytes=tensor_bytes(*stored))
        return facts

