import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import METHODS, make_method
from lifelong.methods.penalty import detached, trainable
from lifelong.models import Network, make_model
from lifelong.params import ParamError


def two_layer(seed=0):
    return Network(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.ReLU()), nn.Linear(3, 6), seed)


def task_stream():
    return build_stream("toy", "task", toy_parts(n_tasks=3), (1, 4, 4))


def replay(model, batches, units, lr, c=0.0, omega_total=None, anchor=None):
    """SI's bookkeeping redone step by step on a copy of ``model``: SGD on the task loss plus
    ``c * sum Omega (theta - anchor)^2``, and ``omega -= g_task * (theta_after - theta_before)``."""
    replica = copy.deepcopy(model)
    params = trainable(replica)
    path = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches:
        loss = F.cross_entropy(replica(x)[:, units], y - units[0])
        g = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        with torch.no_grad():
            for n, p in params.items():
                pull = 0.0 if omega_total is None else 2 * c * omega_total[n] * (p - anchor[n])
                step = -lr * (g[n] + pull)
                path[n] -= g[n] * step
                p += step
    return path, detached(params)


def test_path_integral_and_importance_against_a_step_by_step_computation():
    stream = task_stream()
    model = two_layer()
    lr, c, xi = 0.1, 0.5, 0.1
    method = make_method("si", model, lr=lr, c=c, xi=xi)
    # task 0: no penalty yet
    method.begin_task(stream[0])
    start = detached(trainable(model))
    batches = list(zip(stream[0].x_train.split(8), stream[0].y_train.split(8), strict=True))[:5]
    path, end = replay(model, batches, [0, 1], lr)
    for x, y in batches:
        method.observe(x, y, 0)
    for n, p in trainable(model).items():
        torch.testing.assert_close(p.detach(), end[n], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(method.path[n], path[n], rtol=1e-4, atol=1e-9)
        assert (method.path[n] >= 0).all()  # plain SGD on the task loss: omega = lr * g^2 >= 0
    method.end_task(stream[0])
    omega0 = {n: (path[n] / ((end[n] - start[n]) ** 2 + xi)).clamp(min=0) for n in path}
    for n in path:
        torch.testing.assert_close(method.consolidated.importance[n], omega0[n], rtol=1e-4, atol=1e-9)
        assert torch.equal(method.consolidated.anchor[n], trainable(model)[n])
    # task 1: the penalty pulls, omega still takes the unregularised gradient
    method.begin_task(stream[1])
    batches = list(zip(stream[1].x_train.split(8), stream[1].y_train.split(8), strict=True))[:5]
    path, end1 = replay(model, batches, [2, 3], lr, c, omega0, end)
    for x, y in batches:
        method.observe(x, y, 1)
    for n, p in trainable(model).items():
        torch.testing.assert_close(p.detach(), end1[n], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(method.path[n], path[n], rtol=1e-4, atol=1e-9)
    # Omega <- max(0, Omega + omega / (Delta^2 + xi)); force a negative path somewhere to see the max
    method.path["body.1.weight"][0, 0] = -1e3
    path["body.1.weight"][0, 0] = -1e3
    method.end_task(stream[1])
    for n in path:
        want = (omega0[n] + path[n] / ((end1[n] - end[n]) ** 2 + xi)).clamp(min=0)
        torch.testing.assert_close(method.consolidated.importance[n], want, rtol=1e-4, atol=1e-9)
    assert method.consolidated.importance["body.1.weight"][0, 0] == 0


def test_penalty_and_its_gradient_against_the_formula():
    stream = task_stream()
    model = two_layer()
    method = make_method("si", model, lr=0.1, c=0.7)
    engine.run(method, stream.first(2), epochs=2, batch_size=8)
    omega, anchor = method.consolidated.importance, method.consolidated.anchor
    with torch.no_grad():
        for p in trainable(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    method.begin_task(stream[2])
    theta = trainable(model)
    expected = 0.7 * sum((omega[n] * (theta[n] - anchor[n]) ** 2).sum() for n in theta)
    value = method.penalty()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5) and value.item() > 0
    for (n, p), g in zip(theta.items(), torch.autograd.grad(value, list(theta.values())), strict=True):
        torch.testing.assert_close(g, 2 * 0.7 * omega[n] * (p.detach() - anchor[n]), rtol=1e-5, atol=1e-8)


def run(name, stream, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
    method = make_method(name, model, seed=0, **{"lr": 0.1, **params})
    return engine.run(method, stream, epochs=6, batch_size=8, seed=0)


def test_si_keeps_more_of_the_first_task_than_finetune():
    # two tasks with opposite rules on the same inputs and one shared head
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    finetune = run("finetune", stream)
    si = run("si", stream, c=10.0)  # lr * 2c * max Omega = 0.86 < 2: stable
    assert finetune.accuracy_matrix[0, 0] > 0.9 and finetune.accuracy_matrix[1, 0] < 0.2
    assert si.accuracy_matrix[0, 0] == finetune.accuracy_matrix[0, 0]
    assert si.accuracy_matrix[1, 0] > 0.5  # finetune: 0
    assert si.metrics["acc"] > finetune.metrics["acc"] + 0.05
    plain = run("si", stream, c=0.0)  # no surrogate: finetune, step for step
    np.testing.assert_array_equal(plain.accuracy_matrix, finetune.accuracy_matrix)
    assert plain.train_loss == finetune.train_loss


def test_state_round_trip_mid_task_keeps_the_running_path():
    stream = task_stream()
    method = make_method("si", two_layer(seed=0), lr=0.1)
    engine.run(method, stream.first(1), batch_size=8)
    method.begin_task(stream[1])
    x, y = stream[1].x_train, stream[1].y_train
    method.observe(x[:8], y[:8], 1)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = make_method("si", two_layer(seed=9), lr=0.1)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for stored in ("path", "start"):
        for n, t in getattr(method, stored).items():
            assert torch.equal(getattr(fresh, stored)[n], t)
    for n, omega in method.consolidated.importance.items():
        assert torch.equal(fresh.consolidated.importance[n], omega)
        assert torch.equal(fresh.consolidated.anchor[n], method.consolidated.anchor[n])
    memory = method.memory()
    n = 16 * 3 + 3 + 3 * 6 + 6
    assert memory["importance_values"] == memory["anchor_values"] == n
    assert memory["path_values"] == 2 * n


def test_bad_parameters_are_rejected():
    with pytest.raises(ParamError, match="xi=0"):
        METHODS.resolve("si", {"xi": "0"})
    with pytest.raises(ParamError, match="c=-0.1"):
        METHODS.resolve("si", {"c": "-0.1"})
    assert METHODS.resolve("si", {})["c"] == 0.1 and METHODS.resolve("si", {})["xi"] == 0.1
