import io

import pytest
import torch
import torch.nn.functional as F
from conftest import directions_parts, toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import METHODS, make_method
from lifelong.models import make_model
from lifelong.params import ParamError


def toy_stream(scenario):
    return build_stream("toy", scenario, toy_parts(disjoint=scenario != "domain"), (1, 4, 4))


def lfl_on(stream, seed=0, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(16,))
    return make_method("lfl", model, seed=seed, **{"lr": 0.1, **params})


def train_on(method, task, epochs=2, batch_size=8):
    method.set_training(True)
    method.begin_task(task)
    for _ in range(epochs):
        for x, y in zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True):
            method.observe(x, y, task.id)
    method.end_task(task)


def test_loss_is_cross_entropy_plus_lambda_times_half_the_squared_feature_distance():
    stream = toy_stream("task")
    method = lfl_on(stream, lamb=0.3)
    train_on(method, stream[0])
    method.begin_task(stream[1])
    layer = method.model.body[1]  # mlp: Flatten, Linear(16, 16), ReLU
    old_weight, old_bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    with torch.no_grad():  # move away from the old network so the features differ
        layer.weight += 0.2 * torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(1))
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]
    flat = x.flatten(1)
    with torch.no_grad():
        new_features = torch.relu(flat @ layer.weight.T + layer.bias)
        old_features = torch.relu(flat @ old_weight.T + old_bias)
        head = method.model.head
        logits = new_features @ head.weight.T + head.bias
        ce = F.cross_entropy(mask_logits(logits, stream.layout.train_mask(1)), y)
        distance = ((old_features - new_features) ** 2).sum(1)  # per example
    assert distance.min() > 0
    expected = ce + 0.3 * 0.5 * distance.mean()
    assert method.observe(x, y, 1).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("scenario, old, new", [
    ("domain", [0, 1], []),  # the paper's case: one label set, the whole softmax layer frozen
    ("task", [0, 1], [2, 3]),  # the new task's own head trains
    ("class", [0, 1], [2, 3]),  # old classes' rows frozen although the loss reaches them
])
def test_the_old_output_units_never_move(scenario, old, new):
    stream = toy_stream(scenario)
    method = lfl_on(stream)
    train_on(method, stream[0])
    head = method.model.head
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    body = [p.detach().clone() for p in method.model.body.parameters()]
    train_on(method, stream[1])
    assert torch.equal(head.weight[old], weight[old]) and torch.equal(head.bias[old], bias[old])
    if new:
        assert not torch.equal(head.weight[new], weight[new])
    assert not all(torch.equal(a, b) for a, b in zip(body, method.model.body.parameters(), strict=True))
    if scenario == "class":  # without the freeze the old rows would get a gradient
        method.begin_task(stream[2])
        logits = method.model(stream[2].x_train)
        loss = F.cross_entropy(mask_logits(logits, stream.layout.train_mask(2)), stream[2].y_train)
        (gradient,) = torch.autograd.grad(loss, head.weight)
        assert gradient[old].abs().max() > 1e-3


def test_without_the_penalty_the_features_drift_further():
    stream = toy_stream("domain")
    drift = {}
    for lamb in (0.0, 3.2):
        method = lfl_on(stream, lamb=lamb)
        train_on(method, stream[0])
        x = stream[1].x_train
        with torch.no_grad():
            before = method.model.features(x)
        train_on(method, stream[1], epochs=4)
        with torch.no_grad():
            drift[lamb] = (method.model.features(x) - before).pow(2).sum(1).mean().item()
    assert drift[3.2] < 0.5 * drift[0.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_lfl_forgets_less_than_finetune(seed):
    stream = build_stream("directions", "task", directions_parts(seed=seed), (1, 4, 4))
    bwt = {}
    for name in ("finetune", "lfl"):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(4,))
        method = make_method(name, model, seed=seed, lr=0.1)
        bwt[name] = engine.run(method, stream, epochs=10, batch_size=8, seed=seed).metrics["bwt"]
    assert bwt["finetune"] < -0.1
    assert bwt["lfl"] > bwt["finetune"] + 0.05


def test_state_round_trip_restores_the_old_network_and_the_frozen_units():
    stream = toy_stream("class")
    method = lfl_on(stream)
    engine.run(method, stream.first(2), epochs=1, batch_size=8)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = lfl_on(stream, seed=99)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for a, b in zip(method.old_model.parameters(), fresh.old_model.parameters(), strict=True):
        assert torch.equal(a, b) and not b.requires_grad
    per_net = 16 * 16 + 16 + 16 * 6 + 6
    assert fresh.memory()["old_model_parameters"] == per_net
    assert fresh.memory()["parameters"] == 2 * per_net
    for m in (method, fresh):
        train_on(m, stream[2], epochs=1)
    assert fresh.frozen_units.tolist() == [True] * 4 + [False] * 2
    assert all(torch.equal(a, b) for a, b in zip(method.model.parameters(), fresh.model.parameters(),
                                                 strict=True))


def test_defaults_and_bad_parameters():
    assert METHODS.resolve("lfl", {}) == {"lr": 0.05, "lamb": 3.2}
    with pytest.raises(ParamError, match="lamb=-0.1"):
        METHODS.resolve("lfl", {"lamb": "-0.1"})
    with pytest.raises(ParamError, match="lr=0"):
        METHODS.resolve("lfl", {"lr": "0"})
