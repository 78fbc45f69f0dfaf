"""A pretrained transformer encoder (BERT family) as the backbone for text streams, with plugin slots.

The model ``transformer`` is a `Network` like the others: ``body`` is an ``nn.Sequential`` that maps
int64 token ids ``[N, L]`` to features ``[N, D]`` and ``head`` is one ``nn.Linear`` over all output
units. The body's first module is a `TextEncoder` (a Hugging Face ``transformers`` encoder plus
pooling); optional ``hidden`` layers (Linear + ReLU) after it give HAT-style methods units to gate.

``reset_parameters(seed)`` (used by ``restart``, ``joint``, ``independent``) restores the
pretrained encoder weights (or re-draws a random encoder with BERT's initialisation) and re-draws
the layers on top and the plugins from ``seed`` (GEM's Xavier rule, as in `Network`).

The pieces live in their own modules: `lifelong.models.encoders` (loading MiniLM, a local
directory, a hub name or a tiny random BERT), `lifelong.models.text_encoder` (`TextEncoder`:
padding, pooling, freezing, resetting), `lifelong.models.feature_cache` (a frozen encoder's
features computed once per input row) and `lifelong.models.plugins` (CTR's and Adapter-BERT's
plugin slots). Their public names are importable from here as well.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from torch import nn

from lifelong.models.encoders import (
    BERT_VOCAB_SIZE,
    default_encoder_dir,
    load_encoder,
    random_encoder,
    tiny_bert_config,
)
from lifelong.models.feature_cache import DEFAULT_CACHE_LIMIT, FeatureCache
from lifelong.models.network import Network
from lifelong.models.plugins import PluginSlot, encoder_of, insert_plugins, plugin_slots, set_plugin_task
from lifelong.models.registry import MODELS
from lifelong.models.text_encoder import (
    POOLINGS,
    PluginContext,
    PluginLinear,
    TextEncoder,
    _Shared,  # noqa: F401  (named by pickles made before the split)
)
from lifelong.params import AtLeastOne, Fraction


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
    encoder = encoder_of(model)
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
