import math

import pytest
import torch

from lifelong.models import make_model


def test_mlp_default_is_gem_784_100_100_10_with_xavier_init():
    model = make_model("mlp", (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 10)]
    for layer in linears:
        layer.requires_grad_(False)
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        assert float(layer.weight.abs().max()) <= bound
        assert float(layer.weight.abs().max()) > 0.9 * bound  # uniform up to the Xavier bound
        assert float(layer.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    assert model(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_same_seed_same_weights_and_reset():
    a, b = make_model("mlp", (1, 8, 8), 10, seed=1), make_model("mlp", (1, 8, 8), 10, seed=1)
    c = make_model("mlp", (1, 8, 8), 10, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)
    c.reset_parameters(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_mlp_widths_and_dropout():
    model = make_model("mlp", (1, 8, 8), 20, hidden=(32, 16, 8), dropout=0.5)
    assert model.features(torch.zeros(2, 1, 8, 8)).shape == (2, 8)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 3
    with pytest.raises(ValueError, match="dropout"):
        make_model("mlp", (1, 8, 8), 20, dropout=1.0)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_conv_net_shapes(shape):
    model = make_model("conv", shape, 10, seed=0)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)
    assert model.features(torch.zeros(3, *shape)).shape == (3, 256)


def test_conv_net_rejects_too_many_pooling_stages():
    with pytest.raises(ValueError, match="too small"):
        make_model("conv", (1, 8, 8), 10, channels=(8, 8, 8, 8))
