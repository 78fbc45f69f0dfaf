"""`TextEncoder`: int64 token ids ``[N, L]`` -> pooled features ``[N, D]`` through a BERT-family encoder.

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
- ``reset_parameters(seed)`` (called by `TextNetwork.reset_parameters`, which ``restart``,
  ``joint`` and ``independent`` use) restores the pretrained encoder weights; a randomly
  initialised encoder (``encoder="tiny"``) is re-drawn from ``seed`` with BERT's own
  initialisation (normal(0, initializer_range) weights, unit LayerNorms). Plugins are left alone.

Each attention-output and feed-forward-output projection can carry a plugin (`PluginLinear`, see
`lifelong.models.plugins`); a frozen encoder without plugins keeps its features in a
`lifelong.models.feature_cache.FeatureCache`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.models.encoders import import_transformers
from lifelong.models.feature_cache import DEFAULT_CACHE_LIMIT, FeatureCache, same_bits, under_transform

if TYPE_CHECKING:
    from transformers import PreTrainedModel

POOLINGS = ("cls", "mean", "pooler")


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
        self._additive_mask = int(import_transformers().__version__.split(".")[0]) >= 5
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
                if not same_bits(parameter, value):
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
        if not self.feature_cache or not self.frozen or under_transform(ids.device.type):
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
