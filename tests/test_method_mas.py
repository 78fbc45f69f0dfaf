import io

import numpy as np
import pytest
import torch
from conftest import toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import METHODS, make_method
from lifelong.methods.penalty import detached, trainable
from lifelong.models import Network, make_model
from lifelong.params import ParamError


def two_layer(n_units=6, seed=0):
    """16 inputs -> 3 ReLU units -> ``n_units`` outputs: small enough to back-propagate by hand."""
    return Network(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.ReLU()), nn.Linear(3, n_units), seed)


def importance_by_hand(model, x, units):
    """1/N sum_k |d ||z_units(x_k)||^2 / d theta|, back-propagating dz = 2 z (on the units) by hand."""
    w1, b1, w2, b2 = model.body[1].weight, model.body[1].bias, model.head.weight, model.head.bias
    xf = x.flatten(1)
    a = xf @ w1.T + b1
    h = a.clamp(min=0)
    z = h @ w2.T + b2
    dz = torch.zeros_like(z)
    dz[:, units] = 2 * z[:, units]
    da = (dz @ w2) * (a > 0)
    grads = {"body.1.weight": da[:, :, None] * xf[:, None, :], "body.1.bias": da,
             "head.weight": dz[:, :, None] * h[:, None, :], "head.bias": dz}
    return {name: g.detach().abs().mean(0) for name, g in grads.items()}


def stream_of(scenario, n_tasks=3):
    return build_stream("toy", scenario, toy_parts(n_tasks=n_tasks, disjoint=scenario != "domain"),
                        (1, 4, 4))


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_importance_against_a_hand_computation(scenario):
    stream = stream_of(scenario)
    model = two_layer(n_units=stream.n_units)
    method = make_method("mas", model, lr=0.1)
    engine.run(method, stream.first(1), batch_size=8)
    method.begin_task(stream[1])
    units = [2, 3] if scenario == "task" else [0, 1]
    got = method.importance(stream[1])
    want = importance_by_hand(model, stream[1].x_train, units)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7)
    if scenario == "task":  # multi-head: only the task's own output units count
        assert got["head.bias"][[0, 1, 4, 5]].abs().max() == 0
        assert (got["head.bias"][2:4] > 0).all()


def test_importance_accumulates_by_sum_and_the_anchor_is_the_latest_parameters():
    stream = stream_of("task")
    model = two_layer()
    method = make_method("mas", model, lr=0.1, lamb=0.5)
    seen = []

    def after_task(t, result):
        seen.append((importance_by_hand(model, stream[t].x_train, [2 * t, 2 * t + 1]),
                     detached(trainable(model))))

    engine.run(method, stream.first(2), epochs=2, batch_size=8, on_task_end=after_task)
    (omega0, _), (omega1, anchor1) = seen
    for name in omega0:
        torch.testing.assert_close(method.consolidated.importance[name], omega0[name] + omega1[name],
                                   rtol=1e-4, atol=1e-7)
        assert torch.equal(method.consolidated.anchor[name], anchor1[name])
    # penalty and its gradient: lamb * sum Omega (theta - theta*)^2 and 2 lamb Omega (theta - theta*)
    method.begin_task(stream[2])
    for x, y in zip(stream[2].x_train.split(8)[:3], stream[2].y_train.split(8)[:3], strict=True):
        method.observe(x, y, 2)
    theta = trainable(model)
    omega = {n: omega0[n] + omega1[n] for n in omega0}
    expected = 0.5 * sum((omega[n] * (theta[n] - anchor1[n]) ** 2).sum() for n in theta)
    value = method.penalty()
    assert value.item() == pytest.approx(expected.item(), rel=1e-4) and value.item() > 0
    for (n, p), g in zip(theta.items(), torch.autograd.grad(value, list(theta.values())), strict=True):
        torch.testing.assert_close(g, 2 * 0.5 * omega[n] * (p.detach() - anchor1[n]), rtol=1e-4, atol=1e-7)


def run(name, stream, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
    method = make_method(name, model, seed=0, **{"lr": 0.1, **params})
    return engine.run(method, stream, epochs=6, batch_size=8, seed=0)


def test_mas_keeps_more_of_the_first_task_than_finetune():
    # two tasks with opposite rules on the same inputs and one shared head
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    finetune = run("finetune", stream)
    mas = run("mas", stream, lamb=0.3)  # lr * 2 lamb * max Omega = 0.45 < 2: stable
    assert finetune.accuracy_matrix[0, 0] > 0.9 and finetune.accuracy_matrix[1, 0] < 0.2
    assert mas.accuracy_matrix[0, 0] == finetune.accuracy_matrix[0, 0]
    assert mas.accuracy_matrix[1, 0] > 0.5  # finetune: 0
    assert mas.metrics["acc"] > finetune.metrics["acc"] + 0.05
    plain = run("mas", stream, lamb=0.0)
    np.testing.assert_array_equal(plain.accuracy_matrix, finetune.accuracy_matrix)


def test_state_round_trip():
    stream = stream_of("task")
    method = make_method("mas", two_layer(seed=0), lr=0.1)
    engine.run(method, stream.first(1), batch_size=8)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = make_method("mas", two_layer(seed=9), lr=0.1)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for n, omega in method.consolidated.importance.items():
        assert torch.equal(fresh.consolidated.importance[n], omega)
        assert torch.equal(fresh.consolidated.anchor[n], method.consolidated.anchor[n])
    for m in (method, fresh):
        m.begin_task(stream[1])
        m.observe(stream[1].x_train[:8], stream[1].y_train[:8], 1)
    assert fresh.penalty().item() == method.penalty().item() > 0
    n = 16 * 3 + 3 + 3 * 6 + 6
    assert method.memory()["importance_values"] == method.memory()["anchor_values"] == n


def test_bad_parameters_are_rejected():
    with pytest.raises(ParamError, match="lamb=-1"):
        METHODS.resolve("mas", {"lamb": "-1"})
    assert METHODS.resolve("mas", {})["lamb"] == 1.0
