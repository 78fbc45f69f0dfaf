"""Plugins in a transformer encoder (CTR and Adapter-BERT): where they go and how they are put there.

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.models.text_encoder import PluginLinear, TextEncoder

PLUGIN_KINDS = ("attention", "ffn")


@dataclass(frozen=True)
class PluginSlot:
    """One insertion point: transformer layer ``layer``, ``kind`` ``attention`` or ``ffn``."""

    layer: int
    kind: str
    module: PluginLinear

    @property
    def plugin(self) -> nn.Module | None:
        return self.module.plugin


def encoder_of(model: nn.Module) -> TextEncoder:
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
    encoder = encoder_of(model)
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
    encoder_of(model).clear_feature_cache()  # plugins change the features
    training = encoder_of(model).training
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
    encoder_of(model).context.task_id = task_id
