import pytest
import torch

from lifelong.models import make_model
from lifelong.models.gated import GatedNetwork


def masks_of(*bits):
    return [torch.tensor(b, dtype=torch.bool) for b in bits]


def test_mlp_views_take_the_minimum_of_input_and_output_unit_masks():
    net = GatedNetwork(make_model("mlp", (1, 2, 2), 3, hidden=(3, 2)), (1, 2, 2))
    assert [(layer.name, layer.units, layer.input_repeat) for layer in net.layers] == [
        ("body.1", 3, 0), ("body.3", 2, 1)]
    a1, a2 = torch.tensor([0.2, 1.0, 0.7]), torch.tensor([0.9, 0.1])
    views = net.parameter_views([a1, a2])
    assert torch.equal(views["body.1.weight"], a1.view(3, 1).expand(3, 4))  # first layer: output only
    assert torch.equal(views["body.1.bias"], a1)
    expected = torch.tensor([[0.2, 0.9, 0.7], [0.1, 0.1, 0.1]])
    assert torch.equal(views["body.3.weight"], expected)
    assert torch.equal(views["body.3.bias"], a2)
    assert "head.weight" not in views


def test_conv_views_repeat_each_channel_over_the_positions_the_linear_layer_sees():
    net = GatedNetwork(make_model("conv", (1, 8, 8), 4, channels=(2, 3), hidden=5), (1, 8, 8))
    assert [(layer.units, layer.input_repeat) for layer in net.layers] == [(2, 0), (3, 1), (5, 4)]
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0, 0.5]), torch.ones(5)]
    views = net.parameter_views(a)
    assert views["body.3.weight"].shape == (3, 2, 3, 3)
    assert torch.equal(views["body.3.weight"][:, :, 0, 0], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]]))
    linear = [name for name in views if name.endswith("weight")][-1]
    row = views[linear][0]  # the hidden unit is on: its inputs follow channel (0, 1, .5), 4 positions each
    assert torch.equal(row, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.5] * 4))


def test_weight_count_counts_weights_with_both_ends_on():
    net = GatedNetwork(make_model("conv", (1, 8, 8), 4, channels=(2, 3), hidden=5), (1, 8, 8))
    task = masks_of([1, 0], [1, 1, 0], [1, 0, 1, 1, 0])
    # conv1: 1 channel x 1 input x 9; conv2: 2 x 1 x 9; linear: 3 units x (2 channels x 4 positions)
    assert net.weight_count(task) == 9 + 18 + 3 * 8
    other = masks_of([1, 1], [0, 1, 1], [1, 1, 1, 1, 1])
    assert net.weight_count(task, other) == 9 + 1 * 1 * 9 + 3 * (1 * 4)
    assert net.body_weight_total() == 2 * 9 + 3 * 2 * 9 + 5 * 12


@pytest.mark.parametrize("model, params, shape", [("mlp", {"hidden": (6, 5)}, (1, 3, 3)),
                                                   ("conv", {"channels": (3, 4), "hidden": 6}, (1, 8, 8))])
def test_pruned_network_computes_what_binary_gates_compute(model, params, shape):
    network = make_model(model, shape, 6, seed=1, **params)
    net = GatedNetwork(network, shape)
    generator = torch.Generator().manual_seed(0)
    masks = [torch.rand(layer.units, generator=generator) > 0.4 for layer in net.layers]
    x = torch.randn(7, *shape, generator=generator)
    units = [2, 3]
    expected = net(x, [m.float() for m in masks])[:, units]
    pruned = net.pruned(masks, units)
    assert torch.allclose(pruned(x), expected, atol=1e-6)
    kept = sum(p.numel() for name, p in pruned.body.named_parameters() if name.endswith("weight"))
    assert kept == net.weight_count(masks)
    assert pruned.head.out_features == 2


def test_gating_rejects_models_it_cannot_gate():
    network = make_model("mlp", (1, 2, 2), 3, hidden=(3,))
    network.body.append(torch.nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="cannot gate body layer"):
        GatedNetwork(network, (1, 2, 2))
