"""PackNet: exact per-layer pruning, frozen owners, masked test-time weights, zero forgetting."""

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


def _packnet(stream, seed=0, hidden=(16, 16), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    return make_method("packnet", model, seed=seed, **{"lr": 0.1, "retrain_epochs": 1, **params})


def _train(method, task, epochs=2, batch_size=8):
    method.begin_task(task)
    for _ in range(epochs):
        for x, y in zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True):
            method.observe(x, y, task.id)
    method.end_task(task)


def test_pruning_frees_the_smallest_magnitudes_of_the_task_on_a_hand_case():
    body = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    method = make_method("packnet", Network(body, nn.Linear(3, 2)), prune_ratio=0.4)
    with torch.no_grad():
        body[1].weight.copy_(torch.tensor([[0.1, -0.5], [0.3, 0.05], [-0.2, 0.4]]))
    owner = torch.ones(3, 2, dtype=torch.uint8)
    owner[0, 1] = 7  # an earlier task's weight: never pruned for task 0
    method.owners = {"1.weight": owner}
    method.prune(0)  # task 0 owns 5 weights: round(0.4 * 5) = 2 freed, |0.05| and |0.1|
    assert owner.tolist() == [[0, 7], [1, 0], [1, 1]]
    expected = torch.tensor([[0.0, -0.5], [0.3, 0.0], [-0.2, 0.4]])
    assert torch.equal(body[1].weight.detach(), expected)
    # ties are broken by position, so that exactly round(ratio * n) weights are freed
    with torch.no_grad():
        body[1].weight.copy_(torch.tensor([[0.1, -0.1], [0.1, 0.3], [0.2, 0.4]]))
    owner.fill_(1)
    method.prune_ratio = 0.5
    method.prune(0)  # 3 of 6 freed: the three of magnitude 0.1
    assert owner.tolist() == [[0, 0], [0, 1], [1, 1]]


def test_prune_fraction_per_layer_is_exactly_as_configured_and_kept_weights_are_the_largest():
    stream = build_stream("toy", "task", toy_parts(), (1, 4, 4))
    method = _packnet(stream, prune_ratio=0.6, retrain_epochs=0)
    weights = method.prunable()
    method.begin_task(stream[0])
    for x, y in zip(stream[0].x_train.split(8), stream[0].y_train.split(8), strict=True):
        method.observe(x, y, 0)
    before = {name: w.detach().clone() for name, w in weights.items()}
    method.end_task(stream[0])
    for name, w in weights.items():
        owner, n = method.owners[name], w.numel()
        kept = n - round(0.6 * n)
        assert int((owner == 1).sum()) == kept and int((owner == 0).sum()) == n - kept
        threshold = before[name].abs().flatten().sort().values[n - kept]
        assert bool((before[name].abs()[owner == 1] >= threshold).all())
        assert bool((w[owner == 0] == 0).all()) and torch.equal(w[owner == 1], before[name][owner == 1])
    free = {name: int((o == 0).sum()) for name, o in method.owners.items()}
    _train(method, stream[1])
    for name, owner in method.owners.items():
        kept = free[name] - round(0.6 * free[name])
        assert int((owner == 2).sum()) == kept
        assert int((owner == 0).sum()) == free[name] - kept
    _train(method, stream[2])  # the last task is not pruned: it keeps every free weight
    assert all(int((o == 0).sum()) == 0 for o in method.owners.values())


def test_the_last_task_is_pruned_when_asked():
    stream = build_stream("toy", "task", toy_parts(n_tasks=1), (1, 4, 4))
    method = _packnet(stream, prune_last_task=True)
    _train(method, stream[0])
    for name, w in method.prunable().items():
        assert int((method.owners[name] == 1).sum()) == w.numel() - round(0.75 * w.numel())


def test_retraining_moves_only_the_kept_weights_and_freed_ones_stay_zero():
    stream = build_stream("toy", "task", toy_parts(), (1, 4, 4))
    method = _packnet(stream, retrain_epochs=2, retrain_lr=0.05)
    method.begin_task(stream[0])
    for x, y in zip(stream[0].x_train.split(8), stream[0].y_train.split(8), strict=True):
        method.observe(x, y, 0)
    method.prune(0)
    pruned = {name: w.detach().clone() for name, w in method.prunable().items()}
    method.retrain(stream[0])
    for name, w in method.prunable().items():
        owner = method.owners[name]
        assert bool((w[owner == 0] == 0).all())
        assert not torch.equal(w[owner == 1], pruned[name][owner == 1])


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_old_tasks_weights_and_predictions_are_bit_identical_after_later_tasks(scenario):
    stream = build_stream("toy", scenario, toy_parts(disjoint=scenario == "task"), (1, 4, 4))
    method = _packnet(stream)
    x0 = stream[0].x_test
    seen = {}

    def record(t, result):
        seen[t] = {
            "prediction": method.predict(x0, 0)[:, list(stream[0].layout.task_units[0])].clone(),
            "task0": {n: w[method.owners[n] == 1].clone() for n, w in method.prunable().items()},
            "owners0": {n: (o == 1).clone() for n, o in method.owners.items()},
            "biases": [p.detach().clone() for p in method.shared()],
        }

    result = engine.run(method, stream, epochs=2, batch_size=8, on_task_end=record)
    assert result.accuracy_matrix[0, 0] > 0.9
    assert result.accuracy_matrix[2, 0] == result.accuracy_matrix[1, 0] == result.accuracy_matrix[0, 0]
    for t in (1, 2):
        assert torch.equal(seen[t]["prediction"], seen[0]["prediction"])
        for name in seen[0]["task0"]:
            assert torch.equal(seen[t]["owners0"][name], seen[0]["owners0"][name])
            assert torch.equal(seen[t]["task0"][name], seen[0]["task0"][name])
        assert all(torch.equal(a, b) for a, b in zip(seen[t]["biases"], seen[0]["biases"], strict=True))
    # later tasks did train the body: the free weights of task 0 were taken and moved
    assert any(int((o == 2).sum()) > 0 for o in method.owners.values())


def test_prediction_uses_only_weights_of_tasks_up_to_t_and_the_tasks_head_by_hand():
    stream = build_stream("toy", "domain", toy_parts(disjoint=False), (1, 4, 4))
    method = _packnet(stream)
    _train(method, stream[0])
    _train(method, stream[1])
    model, x = method.model, stream[0].x_test.flatten(1)
    (w1, b1), (w2, b2) = [(layer.weight, layer.bias) for layer in model.body if isinstance(layer, nn.Linear)]
    o1, o2 = method.owners["1.weight"], method.owners["3.weight"]
    for t in (0, 1):
        h = F.relu(F.linear(x, w1 * ((o1 >= 1) & (o1 <= t + 1)), b1))
        h = F.relu(F.linear(h, w2 * ((o2 >= 1) & (o2 <= t + 1)), b2))
        head_w, head_b = method.heads[t]
        expected = F.linear(h, head_w, head_b)
        torch.testing.assert_close(method.predict(stream[0].x_test, t), expected, rtol=1e-5, atol=1e-6)
    # the domain head moved on with task 1, but task 0 keeps its own copy
    assert not torch.equal(method.heads[0][0], method.heads[1][0])


def test_packnet_remembers_conflicting_tasks_that_finetune_forgets():
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    results = {}
    for name, params in [("finetune", {}), ("packnet", {"retrain_epochs": 2})]:
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
        method = make_method(name, model, seed=0, lr=0.1, **params)
        results[name] = engine.run(method, stream, epochs=6, batch_size=8)
    assert results["finetune"].accuracy_matrix[1, 0] < 0.2
    packnet = results["packnet"].accuracy_matrix
    assert packnet[0, 0] > 0.9 and packnet[1, 0] == packnet[0, 0] and packnet[1, 1] > 0.9


def test_conv_bodies_are_pruned_layer_by_layer():
    stream = build_stream("toy", "task", toy_parts(n_tasks=2), (1, 4, 4))
    model = make_model("conv", stream.input_shape, stream.n_units, channels=(4,), hidden=8)
    method = make_method("packnet", model, lr=0.1, retrain_epochs=1)
    result = engine.run(method, stream, epochs=2, batch_size=8)
    assert set(method.owners) == {"0.weight", "4.weight"}
    conv = method.owners["0.weight"]
    assert conv.shape == (4, 1, 3, 3) and int((conv == 1).sum()) == 36 - round(0.75 * 36)
    assert result.accuracy_matrix[1, 0] == result.accuracy_matrix[0, 0]


def test_memory_reports_one_mask_byte_per_body_weight_and_the_saved_heads():
    stream = build_stream("toy", "task", toy_parts(), (1, 4, 4))
    method = _packnet(stream)
    result = engine.run(method, stream, epochs=1, batch_size=8)
    n_weights = 16 * 16 + 16 * 16
    memory = result.method_memory[-1]
    assert memory["mask_values"] == memory["mask_bytes"] == n_weights
    assert [m["head_parameters"] for m in result.method_memory] == [34, 68, 102]  # 2 units x (16 + 1)
    assert memory["head_bytes"] == 102 * 4


def test_state_round_trip_restores_owners_heads_and_predictions():
    stream = build_stream("toy", "task", toy_parts(), (1, 4, 4))
    method = _packnet(stream)
    _train(method, stream[0])
    _train(method, stream[1])
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = _packnet(stream, seed=5)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for t in (0, 1, 2):
        assert torch.equal(fresh.predict(stream[t].x_test, t), method.predict(stream[t].x_test, t))
    assert all(torch.equal(fresh.owners[n], o) for n, o in method.owners.items())
    _train(method, stream[2])
    _train(fresh, stream[2])
    assert torch.equal(fresh.predict(stream[2].x_test, 2), method.predict(stream[2].x_test, 2))


def test_needs_the_task_id_and_rejects_bad_settings(toy_class_stream):
    method = _packnet(toy_class_stream)
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(method, toy_class_stream)
    with pytest.raises(ValueError, match="packnet needs the task id at test time"):
        method.begin_task(toy_class_stream[0])
    with pytest.raises(ValueError, match="packnet needs the task id"):
        method.predict(toy_class_stream[0].x_test, None)
    with pytest.raises(ParamError, match="prune_ratio=1.0"):
        METHODS.resolve("packnet", {"prune_ratio": "1.0"})
    with pytest.raises(ParamError, match="retrain_epochs=-1"):
        METHODS.resolve("packnet", {"retrain_epochs": "-1"})
    batchnorm = Network(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4)), nn.Linear(4, 6))
    task_stream = build_stream("toy", "task", toy_parts(), (1, 4, 4))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        make_method("packnet", batchnorm).begin_task(task_stream[0])
