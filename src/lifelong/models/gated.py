"""A `Network` with a task-conditioned gate on every unit of every hidden layer (HAT's architecture).

`GatedNetwork` takes a plain `Network` (an MLP or conv body of Linear / Conv2d layers with
activations, dropout, pooling and one Flatten between them) and multiplies the output of each
parametrised layer's block (the layer and the modules after it, up to the next parametrised layer
or Flatten) by a per-unit gate: a vector over the layer's units (MLP) or channels (conv), given per
call. The head is left ungated, as in HAT's multi-head networks.

Besides the forward pass, the structure answers what HAT needs about weights in terms of unit
masks: the weight-shaped view of a pair (mask of a layer's inputs, mask of its outputs), how many
weights two sets of unit masks share, and the pruned sub-network a binary unit mask keeps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.models.network import Network

PARAMETRISED = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class GatedLayer:
    """One parametrised body layer: its index in the body, its units and how its inputs look."""

    name: str  # e.g. "body.1"
    index: int  # position in the body Sequential
    units: int  # output units (Linear) or channels (Conv2d)
    #: each input unit of this layer repeats the previous layer's unit this many times (a Linear
    #: after Flatten sees every channel at H*W positions); 0 for the first layer (raw inputs)
    input_repeat: int


class GatedNetwork(nn.Module):
    """``head(gated body(x))``, with ``gates[l]`` multiplying the units of hidden layer ``l``."""

    def __init__(self, network: Network, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        if not isinstance(network, Network) or not isinstance(network.body, nn.Sequential):
            raise ValueError("HAT needs a lifelong Network whose body is an nn.Sequential "
                             "(the mlp or conv model)")
        self.body = network.body
        self.head = network.head
        self.input_shape = tuple(input_shape)
        self.layers = describe_layers(self.body, input_shape)
        if not self.layers:
            raise ValueError("HAT needs at least one Linear or Conv2d layer in the model's body")
        self._gate_after = self._gate_positions()

    def _gate_positions(self) -> dict[int, int]:
        """Body position -> gated layer whose gate applies after that module."""
        modules = list(self.body)
        positions: dict[int, int] = {}
        starts = [layer.index for layer in self.layers]
        for number, start in enumerate(starts):
            end = starts[number + 1] if number + 1 < len(starts) else len(modules)
            last = start
            for position in range(start + 1, end):  # the block runs up to a Flatten or next layer
                if isinstance(modules[position], nn.Flatten):
                    break
                last = position
            positions[last] = number
        return positions

    def forward(self, x: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(x, gates))

    def features(self, x: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        h = x
        for position, module in enumerate(self.body):
            h = module(h)
            layer = self._gate_after.get(position)
            if layer is not None:
                gate = gates[layer]
                h = h * gate.view(1, -1, *([1] * (h.dim() - 2)))
        return h

    # ------------------------------------------------------------------ weights in terms of units
    def parameter_views(self, unit_masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per body parameter name: ``min(mask of its output unit, mask of its input unit)``.

        The first layer's weights depend on their output unit only, biases too (HAT's
        ``get_view_for``). Shapes broadcast against the parameters.
        """
        views = {}
        for number, layer in enumerate(self.layers):
            module = self.body[layer.index]
            post = unit_masks[number]
            shape = [-1] + [1] * (module.weight.dim() - 1)
            weight = post.view(shape).expand_as(module.weight)
            if number > 0:
                pre = input_mask(unit_masks[number - 1], layer)
                pre_shape = [1, -1] + [1] * (module.weight.dim() - 2)
                weight = torch.minimum(weight, pre.view(pre_shape).expand_as(module.weight))
            views[f"body.{layer.index}.weight"] = weight
            if module.bias is not None:
                views[f"body.{layer.index}.bias"] = post
        return views

    def weight_count(self, masks: list[torch.Tensor], others: list[torch.Tensor] | None = None) -> int:
        """Weights (not biases) whose input and output units are on in ``masks`` (and ``others``).

        Masks are boolean unit masks per layer; the first layer's inputs are always on.
        """
        total = 0
        for number, layer in enumerate(self.layers):
            module = self.body[layer.index]
            post = masks[number] if others is None else masks[number] & others[number]
            kernel = module.weight[0, 0].numel()  # 1 for Linear, kh*kw for Conv2d
            if number == 0:
                fan_in = module.weight.shape[1]
            else:
                pre = masks[number - 1] if others is None else masks[number - 1] & others[number - 1]
                fan_in = int(pre.sum()) * max(layer.input_repeat, 1)
            total += int(post.sum()) * fan_in * kernel
        return total

    def body_weight_total(self) -> int:
        return sum(self.body[layer.index].weight.numel() for layer in self.layers)

    @torch.no_grad()
    def pruned(self, unit_masks: list[torch.Tensor], units: list[int] | None = None) -> Network:
        """A plain `Network` of only the units on in the boolean ``unit_masks`` (and head ``units``).

        Its outputs equal this network's with the gates set to the masks (0/1), over ``units``.
        """
        body = copy.deepcopy(self.body)
        for number, layer in enumerate(self.layers):
            old = self.body[layer.index]
            keep_out = unit_masks[number].nonzero().squeeze(1)
            weight = old.weight[keep_out]
            if number > 0:
                keep_in = input_mask(unit_masks[number - 1], layer).nonzero().squeeze(1)
                weight = weight[:, keep_in]
            body[layer.index] = _resized(old, weight, None if old.bias is None else old.bias[keep_out])
        last = input_mask(unit_masks[-1], _head_layer(self.layers, self.head)).nonzero().squeeze(1)
        rows = torch.arange(self.head.out_features) if units is None else torch.as_tensor(units)
        head = nn.Linear(len(last), len(rows), bias=self.head.bias is not None)
        head.weight.copy_(self.head.weight[rows][:, last])
        if head.bias is not None:
            head.bias.copy_(self.head.bias[rows])
        weights = {**{f"body.{k}": v.clone() for k, v in body.state_dict().items()},
                   **{f"head.{k}": v.clone() for k, v in head.state_dict().items()}}
        network = Network(body, head)  # (which re-initialises its layers: put the weights back)
        network.load_state_dict(weights)
        return network


def input_mask(previous: torch.Tensor, layer: GatedLayer) -> torch.Tensor:
    """The previous layer's unit mask as a mask over this layer's inputs (repeated after Flatten)."""
    return previous.repeat_interleave(max(layer.input_repeat, 1))


def _head_layer(layers: list[GatedLayer], head: nn.Linear) -> GatedLayer:
    repeat = head.in_features // layers[-1].units
    return GatedLayer("head", -1, head.out_features, repeat)


def _resized(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    if isinstance(old, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = nn.Conv2d(weight.shape[1], weight.shape[0], old.kernel_size, old.stride, old.padding,
                        old.dilation, bias=bias is not None)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def describe_layers(body: nn.Sequential, input_shape: tuple[int, ...]) -> list[GatedLayer]:
    """The parametrised layers of ``body``, with the input repetition a Flatten introduces."""
    layers: list[GatedLayer] = []
    h = torch.zeros(1, *input_shape)
    channels_before_flatten = None
    with torch.no_grad():
        for index, module in enumerate(body):
            if isinstance(module, nn.Flatten) and h.dim() > 2:
                channels_before_flatten = h.shape[1]
            if isinstance(module, PARAMETRISED):
                if not layers:
                    repeat = 0
                elif isinstance(module, nn.Linear) and channels_before_flatten:
                    repeat = module.in_features // channels_before_flatten
                else:
                    repeat = 1
                units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
                layers.append(GatedLayer(f"body.{index}", index, units, repeat))
                channels_before_flatten = None
            elif any(p.requires_grad for p in module.parameters(recurse=False)):
                raise ValueError(f"HAT cannot gate body layer {index} ({type(module).__name__}); "
                                 "use the mlp or conv model")
            h = module(h)
    return layers
