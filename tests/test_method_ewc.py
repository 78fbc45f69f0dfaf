import io

import numpy as np
import pytest
import torch
from conftest import toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import METHODS, make_method
from lifelong.methods.ewc import EWC
from lifelong.methods.penalty import detached, trainable
from lifelong.models import Network, make_model
from lifelong.params import ParamError


def two_layer(n_units=6, seed=0):
    """16 inputs -> 3 ReLU units -> ``n_units`` outputs: small enough to back-propagate by hand."""
    return Network(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.ReLU()), nn.Linear(3, n_units), seed)


def by_hand(model, x, dz):
    """Per-example gradients of every parameter given the output gradients ``dz`` (n, units)."""
    w1, b1, w2 = model.body[1].weight, model.body[1].bias, model.head.weight
    xf = x.flatten(1)
    a = xf @ w1.T + b1
    h = a.clamp(min=0)
    da = (dz @ w2) * (a > 0)
    grads = {"body.1.weight": da[:, :, None] * xf[:, None, :], "body.1.bias": da,
             "head.weight": dz[:, :, None] * h[:, None, :], "head.bias": dz}
    return {name: g.detach() for name, g in grads.items()}


def nll_output_gradient(model, x, y, units):
    """d(-log softmax_y over ``units``)/dz = p - onehot(y) on the units, 0 elsewhere."""
    z = model(x).detach()
    p = torch.zeros_like(z)
    p[:, units] = torch.softmax(z[:, units], dim=1)
    return p - nn.functional.one_hot(y, z.shape[1]).float()


def fisher_by_hand(model, x, y, units, batch):
    dz = nll_output_gradient(model, x, y, units)
    per_example = by_hand(model, x, dz)
    fisher = {}
    for name, g in per_example.items():
        parts = [g[s:s + batch].mean(0) ** 2 * len(g[s:s + batch]) / len(g)
                 for s in range(0, len(g), batch)]
        fisher[name] = sum(parts)
    return fisher


def task_stream(n_tasks=3, scenario="task"):
    return build_stream("toy", scenario, toy_parts(n_tasks=n_tasks), (1, 4, 4))


@pytest.mark.parametrize("fisher_batch", [1, 7, None])
def test_fisher_against_a_hand_computation(fisher_batch):
    stream = task_stream()
    model = two_layer()
    method = make_method("ewc", model, lr=0.1, fisher_batch=fisher_batch)
    engine.run(method, stream.first(1), batch_size=8)  # some training, so the ReLUs differ
    method.begin_task(stream[1])
    task = stream[1]  # its units are 2 and 3
    got = method.fisher(task)
    batch = len(task.y_train) if fisher_batch is None else fisher_batch
    want = fisher_by_hand(model, task.x_train, task.y_train, [2, 3], batch)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7)
    # the head rows of the other tasks' units get no gradient
    assert got["head.weight"][[0, 1, 4, 5]].abs().max() == 0
    if fisher_batch == 1:  # per example: the mean of squares exceeds the square of the mean
        whole = fisher_by_hand(model, task.x_train, task.y_train, [2, 3], len(task.y_train))
        assert (want["head.bias"][2:4] > 5 * whole["head.bias"][2:4]).all()


def test_fisher_samples_are_a_seeded_draw_without_replacement():
    stream = task_stream()
    model = two_layer()
    method = make_method("ewc", model, fisher_samples=10, seed=5)
    method.begin_task(stream[0])
    got = method.fisher(stream[0])
    index = torch.randperm(90, generator=torch.Generator().manual_seed(5))[:10]
    task = stream[0]
    want = fisher_by_hand(model, task.x_train[index], task.y_train[index], [0, 1], 1)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7)


def train_recording(variant, lamb=2.0):
    """Train two tasks, recording each task's Fisher and final parameters."""
    stream = task_stream()
    model = two_layer()
    method = make_method("ewc", model, lr=0.1, lamb=lamb, variant=variant)
    fishers, anchors = [], []
    compute = method.fisher

    def recording(task):
        fishers.append(compute(task))
        anchors.append(detached(trainable(model)))
        return fishers[-1]

    method.fisher = recording
    engine.run(method, stream.first(2), epochs=2, batch_size=8)
    method.begin_task(stream[2])
    for x, y in zip(stream[2].x_train.split(8)[:3], stream[2].y_train.split(8)[:3], strict=True):
        method.observe(x, y, 2)  # move away from the anchors
    return method, fishers, anchors


@pytest.mark.parametrize("variant", ["separate", "merged"])
def test_penalty_and_its_gradient_against_the_formula(variant):
    lamb = 2.0
    method, (f0, f1), (a0, a1) = train_recording(variant, lamb)
    theta = trainable(method.model)
    if variant == "separate":  # lamb/2 sum_k sum_i F_k,i (theta_i - theta*_k,i)^2
        terms = [(f0, a0), (f1, a1)]
    else:  # HAT: F = (F_1 + 1 * F_0) / 2, anchor = after task 1
        terms = [({n: (f1[n] + f0[n]) / 2 for n in f1}, a1)]
    expected = lamb / 2 * sum(((f[n] * (theta[n] - a[n]) ** 2).sum() for f, a in terms for n in theta))
    value = method.penalty()
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    assert value.item() > 0
    grads = torch.autograd.grad(value, list(theta.values()))
    for (name, p), g in zip(theta.items(), grads, strict=True):
        want = lamb * sum(f[name] * (p.detach() - a[name]) for f, a in terms)
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-7)


def test_a_step_is_sgd_on_the_task_loss_plus_the_penalty():
    stream = task_stream()
    model = two_layer()
    method = make_method("ewc", model, lr=0.1, lamb=50.0)
    engine.run(method, stream.first(1), batch_size=8)
    anchor = detached(trainable(model))
    fisher = method.consolidated.importance
    method.begin_task(stream[1])
    x, y = stream[1].x_train, stream[1].y_train
    method.observe(x[:8], y[:8], 1)  # leaves the anchor (where the penalty's gradient is zero)
    before = detached(trainable(model))
    dz = nll_output_gradient(model, x[8:16], y[8:16], [2, 3])
    task_gradient = {n: g.mean(0) for n, g in by_hand(model, x[8:16], dz).items()}
    expected_loss = nn.functional.cross_entropy(model(x[8:16])[:, 2:4], y[8:16] - 2)
    loss = method.observe(x[8:16], y[8:16], 1)
    for name, p in trainable(model).items():
        step = task_gradient[name] + 50.0 * fisher[name] * (before[name] - anchor[name])
        assert (before[name] != anchor[name]).any()
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * step, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)  # the task loss alone


def flip_stream():
    """Two tasks with opposite rules on the same inputs (one shared head): learning the second
    undoes the first."""
    return build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))


def run(name, stream, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
    method = make_method(name, model, seed=0, **{"lr": 0.1, **params})
    return engine.run(method, stream, epochs=6, batch_size=8, seed=0)


def test_ewc_keeps_the_first_task_where_finetune_forgets_it():
    stream = flip_stream()
    finetune = run("finetune", stream)
    assert finetune.accuracy_matrix[0, 0] > 0.9 and finetune.accuracy_matrix[1, 0] < 0.2
    for variant in ("separate", "merged"):
        # a separable task learnt to a near-zero loss has a small Fisher (max 0.006 here): a large
        # lamb, still stable (lr * lamb * max F = 1.8 < 2)
        ewc = run("ewc", stream, lamb=3000.0, variant=variant)
        assert ewc.accuracy_matrix[0, 0] == finetune.accuracy_matrix[0, 0]  # same first task
        assert ewc.accuracy_matrix[1, 0] > 0.5  # finetune: 0
        assert ewc.metrics["acc"] > finetune.metrics["acc"] + 0.05
    # without the penalty EWC is finetune, step for step
    plain = run("ewc", stream, lamb=0.0)
    np.testing.assert_array_equal(plain.accuracy_matrix, finetune.accuracy_matrix)
    assert plain.train_loss == finetune.train_loss


def test_state_round_trip_restores_fisher_anchor_and_sample_draws():
    stream = task_stream()
    method = make_method("ewc", two_layer(seed=0), lr=0.1, fisher_samples=20, seed=4)
    engine.run(method, stream.first(1), batch_size=8)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = make_method("ewc", two_layer(seed=9), lr=0.1, fisher_samples=20, seed=4)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for name in method.consolidated.importance:
        assert torch.equal(fresh.consolidated.importance[name], method.consolidated.importance[name])
        assert torch.equal(fresh.consolidated.anchor[name], method.consolidated.anchor[name])
    for m in (method, fresh):
        m.begin_task(stream[1])
    assert fresh.penalty().item() == method.penalty().item() == 0.0  # both at the anchor
    # the next task's Fisher draws the same examples
    ours, theirs = method.fisher(stream[1]), fresh.fisher(stream[1])
    for name, f in ours.items():
        assert torch.equal(theirs[name], f)


def test_memory_is_two_copies_of_the_parameters_whatever_the_number_of_tasks():
    stream = task_stream()
    result = engine.run(make_method("ewc", two_layer(), lr=0.1), stream, batch_size=8)
    n = 16 * 3 + 3 + 3 * 6 + 6
    assert [m["fisher_values"] for m in result.method_memory] == [n, n, n]
    assert result.method_memory[-1]["anchor_bytes"] == 4 * n


def test_bad_parameters_are_rejected():
    with pytest.raises(ParamError, match="lamb=-1"):
        METHODS.resolve("ewc", {"lamb": "-1"})
    with pytest.raises(ParamError, match="variant='online'"):
        METHODS.resolve("ewc", {"variant": "online"})
    with pytest.raises(ParamError, match="fisher_batch=0"):
        METHODS.resolve("ewc", {"fisher_batch": "0"})
    with pytest.raises(ParamError, match="fisher_samples=0"):
        METHODS.resolve("ewc", {"fisher_samples": 0})
    assert METHODS.resolve("ewc", {"fisher_batch": "none"})["fisher_batch"] is None
    method = EWC(two_layer(), variant="online")  # built directly, bypassing the registry
    with pytest.raises(ValueError, match="variant='online'"):
        method.begin_task(task_stream()[0])


def test_a_penalty_sgd_cannot_follow_is_reported_before_training_on_it():
    stream = task_stream()
    method = make_method("ewc", two_layer(), lr=0.1, lamb=1e7)
    engine.run(method, stream.first(1), batch_size=8)
    curvature = 1e7 * method.consolidated.max_importance()
    assert 0.1 * curvature > 2
    with pytest.warns(RuntimeWarning, match="SGD on the penalty diverges.*lower lr or lamb"):
        method.begin_task(stream[1])
