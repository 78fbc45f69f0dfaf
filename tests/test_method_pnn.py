"""Progressive networks: lateral shapes, parameter growth, the forward by hand, frozen columns."""

import io

import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import METHODS, make_method
from lifelong.models import make_model
from lifelong.models.network import Network
from lifelong.params import ParamError


def _pnn(stream, seed=0, model="mlp", model_params=None, **params):
    network = make_model(model, stream.input_shape, stream.n_units, seed=seed,
                         **(model_params or {"hidden": (16, 8)}))
    return make_method("pnn", network, seed=seed, **{"lr": 0.1, **params})


def _stream(scenario="task", n_tasks=3):
    return build_stream("toy", scenario, toy_parts(n_tasks=n_tasks, disjoint=scenario == "task"), (1, 4, 4))


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_linear_laterals_have_the_papers_shapes_and_parameters_grow_quadratically():
    stream = _stream(n_tasks=4)
    method = _pnn(stream)
    own = (16 * 16 + 16) + (16 * 8 + 8) + (8 * 2 + 2)  # input 16 -> 16 -> 8 -> 2 units per task
    lateral = 16 * 8 + 8 * 2  # U_2^(k:j) (8 x 16) and U_head^(k:j) (2 x 8) per earlier column j
    for k, task in enumerate(stream):
        method.begin_task(task)
        column = method.net.columns[k]
        assert len(column.laterals) == (2 if k else 0)
        if k:
            assert column.laterals[0].project.weight.shape == (8, 16 * k)
            assert column.laterals[1].project.weight.shape == (2, 8 * k)
            assert column.laterals[0].project.bias is None
        assert _count(column) == own + k * lateral
        K = k + 1
        assert method.memory()["parameters"] == K * own + K * (K - 1) // 2 * lateral
        assert method.memory()["lateral_parameters"] == K * (K - 1) // 2 * lateral


def test_adapter_laterals_scale_reduce_and_project():
    stream = _stream(n_tasks=3)
    method = _pnn(stream, adapter="mlp")
    for task in stream:
        method.begin_task(task)
    for k in (1, 2):
        into_2, into_head = method.net.columns[k].laterals
        assert into_2.alpha.shape == (k,) and bool(((into_2.alpha >= 0) & (into_2.alpha <= 0.1)).all())
        assert into_2.reduce.weight.shape == (16, 16 * k) and into_2.project.weight.shape == (8, 16)
        assert into_head.reduce.weight.shape == (8, 8 * k) and into_head.project.weight.shape == (2, 8)
        expected = (k + 16 * 16 * k + 16 + 16 * 8) + (k + 8 * 8 * k + 8 + 8 * 2)
        assert _count(method.net.columns[k].laterals) == expected


@pytest.mark.parametrize("adapter", ["linear", "mlp"])
def test_forward_of_the_second_column_by_hand(adapter):
    stream = _stream(n_tasks=2)
    method = _pnn(stream, adapter=adapter)
    method.begin_task(stream[0])
    method.begin_task(stream[1])
    c0, c1 = method.net.columns
    with torch.no_grad():  # non-zero biases so that every term shows
        for p in method.net.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    x = stream[1].x_test
    flat = x.flatten(1)
    h0 = F.relu(F.linear(flat, c0.layers[0].weight, c0.layers[0].bias))
    h1 = F.relu(F.linear(flat, c1.layers[0].weight, c1.layers[0].bias))
    g0 = F.relu(F.linear(h0, c0.layers[1].weight, c0.layers[1].bias))

    def lateral(module, h, nonlinear):
        if adapter == "linear":
            return F.linear(h, module.project.weight)
        v = F.linear(module.alpha[0] * h, module.reduce.weight, module.reduce.bias)
        return F.linear(F.relu(v) if nonlinear else v, module.project.weight)

    g1 = F.relu(F.linear(h1, c1.layers[1].weight, c1.layers[1].bias) + lateral(c1.laterals[0], h0, True))
    out = F.linear(g1, c1.head.weight, c1.head.bias) + lateral(c1.laterals[1], g0, False)
    logits = method.predict(x, 1)
    units = list(stream.layout.task_units[1])
    torch.testing.assert_close(logits[:, units], out)
    others = [u for u in range(stream.n_units) if u not in units]
    assert bool((logits[:, others] == 0).all())
    torch.testing.assert_close(method.predict(x, 0)[:, [0, 1]], F.linear(g0, c0.head.weight, c0.head.bias))


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_old_columns_are_frozen_and_old_predictions_bit_identical(scenario):
    stream = _stream(scenario)
    method = _pnn(stream, adapter="mlp")
    x0 = stream[0].x_test
    seen = {}

    def record(t, result):
        columns = [[p.detach().clone() for p in c.parameters()] for c in method.net.columns[:2]]
        seen[t] = (method.predict(x0, 0).clone(), columns[0], columns[1] if t >= 1 else None)

    result = engine.run(method, stream, epochs=3, batch_size=8, on_task_end=record)
    R = result.accuracy_matrix
    assert R[0, 0] > 0.9 and R[1, 1] > 0.9 and R[2, 2] > 0.9
    assert R[2, 0] == R[1, 0] == R[0, 0] and R[2, 1] == R[1, 1]
    for t in (1, 2):
        assert torch.equal(seen[t][0], seen[0][0])
        assert all(torch.equal(a, b) for a, b in zip(seen[t][1], seen[0][1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(seen[2][2], seen[1][2], strict=True))
    assert not any(p.requires_grad for c in method.net.columns[:2] for p in c.parameters())
    assert all(p.requires_grad for p in method.net.columns[2].parameters())


def test_laterals_feed_the_new_column():
    """Zeroing the laterals of a trained column changes its output (they are on the path)."""
    stream = _stream(n_tasks=2)
    method = _pnn(stream)
    engine.run(method, stream, epochs=2, batch_size=8)
    x = stream[1].x_test
    before = method.predict(x, 1).clone()
    with torch.no_grad():
        for p in method.net.columns[1].laterals.parameters():
            p.zero_()
    assert not torch.allclose(method.predict(x, 1), before)


def test_conv_columns_with_conv_and_flattened_laterals():
    stream = _stream(n_tasks=2)
    method = _pnn(stream, model="conv", model_params={"channels": (3, 4), "hidden": 6})
    result = engine.run(method, stream, epochs=2, batch_size=8)
    into_conv2, into_fc, into_head = method.net.columns[1].laterals
    assert into_conv2.project.weight.shape == (4, 3, 3, 3)
    assert into_fc.project.weight.shape == (6, 4) and into_head.project.weight.shape == (2, 6)
    assert result.accuracy_matrix[1, 0] == result.accuracy_matrix[0, 0]
    # a linear layer reading a flattened 3 x 2 x 2 map: laterals read the flattened maps too
    wide = _pnn(stream, model="conv", model_params={"channels": (3,), "hidden": 6}, width_scale=2.0)
    wide.begin_task(stream[0])
    wide.begin_task(stream[1])
    column = wide.net.columns[1]
    assert column.layers[1].weight.shape == (12, 6 * 4)
    assert column.laterals[0].project.weight.shape == (12, 6 * 4)
    assert wide.predict(stream[1].x_test, 1).shape == (len(stream[1].x_test), stream.n_units)


def test_width_scale_gives_the_hat_codes_columns():
    stream = _stream(n_tasks=3)
    method = _pnn(stream, model_params={"hidden": (100, 100)}, width_scale=1.117 / 3)
    method.begin_task(stream[0])
    assert method.widths == [37, 37]  # int(1.117 * 100 / 3)


def test_state_round_trip_and_resume():
    stream = _stream()
    method = _pnn(stream, adapter="mlp")
    engine.run(method, stream.first(2), epochs=2, batch_size=8)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = _pnn(stream, seed=7, adapter="mlp")
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for t in range(3):
        assert torch.equal(fresh.predict(stream[t].x_test, t), method.predict(stream[t].x_test, t))
    flags = [p.requires_grad for p in method.net.parameters()]
    assert [p.requires_grad for p in fresh.net.parameters()] == flags and flags.count(True) > 0
    for m in (method, fresh):
        m.begin_task(stream[2])
        for x, y in zip(stream[2].x_train.split(8), stream[2].y_train.split(8), strict=True):
            m.observe(x, y, 2)
    assert torch.equal(fresh.predict(stream[2].x_test, 2), method.predict(stream[2].x_test, 2))


def test_needs_the_task_id_and_rejects_bad_settings(toy_class_stream):
    method = _pnn(toy_class_stream)
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(method, toy_class_stream)
    with pytest.raises(ValueError, match="pnn needs the task id at test time"):
        method.begin_task(toy_class_stream[0])
    with pytest.raises(ValueError, match="pnn needs the task id"):
        method.predict(toy_class_stream[0].x_test, None)
    with pytest.raises(ParamError, match="adapter='conv'"):
        METHODS.resolve("pnn", {"adapter": "conv"})
    with pytest.raises(ParamError, match="width_scale=0"):
        METHODS.resolve("pnn", {"width_scale": "0"})
    batchnorm = Network(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4)), nn.Linear(4, 6))
    with pytest.raises(ValueError, match="pnn supports bodies of nn.Linear and nn.Conv2d.*BatchNorm1d"):
        make_method("pnn", batchnorm).begin_task(_stream()[0])
