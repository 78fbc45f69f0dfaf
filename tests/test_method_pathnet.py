"""PathNet: paths of at most N modules, mutation, the binary tournament, frozen paths, resume."""

import io

import pytest
import torch
from conftest import toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import METHODS, make_method
from lifelong.methods.pathnet import PathNet
from lifelong.models import make_model
from lifelong.models.network import Network
from lifelong.params import ParamError


def _stream(scenario="task", n_tasks=3):
    return build_stream("toy", scenario, toy_parts(n_tasks=n_tasks, disjoint=scenario == "task"), (1, 4, 4))


def _pathnet(stream, seed=0, hidden=(16, 16), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    defaults = {"lr": 0.1, "n_modules": 4, "n_active": 2, "steps_per_path": 3, "width_factor": 0.5}
    return make_method("pathnet", model, seed=seed, **{**defaults, **params})


def _batches(task, batch_size=8, epochs=1):
    for _ in range(epochs):
        yield from zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True)


def _module_state(method, layer, m):
    return [p.detach().clone() for p in method.net.layers[layer][m].parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_paths_have_at_most_n_distinct_modules_per_layer_and_only_those_train():
    stream = _stream()
    method = _pathnet(stream, n_modules=6, n_active=3)
    method.begin_task(stream[0])
    assert method.candidates.shape == (2, 2, 3)  # population x layers x N
    for path in method.candidates:
        assert all(len(set(row)) == 3 for row in path.tolist())  # N distinct at the start
    mutated = method.candidates[0]
    for _ in range(200):
        mutated = method.mutate(mutated)
        assert all(len(set(row)) <= 3 for row in mutated.tolist())
        assert bool(((mutated >= 0) & (mutated < 6)).all())
    # one step trains exactly the modules of the path being evaluated
    method.pair = [0, 1]
    before = {(k, m): _module_state(method, k, m) for k in range(2) for m in range(6)}
    x, y = next(_batches(stream[0]))
    method.observe(x, y, 0)
    chosen = [set(row) for row in method.candidates[0].tolist()]
    for (layer, m), params in before.items():
        assert _same(params, _module_state(method, layer, m)) == (m not in chosen[layer])


def test_mutation_rate_and_step_follow_the_paper():
    stream = _stream()
    method = _pathnet(stream, n_modules=10, n_active=3)
    method.begin_task(stream[0])
    path = torch.tensor([[0, 4, 9], [5, 1, 8]])
    changed, draws = 0, 3000
    for _ in range(draws):
        new = method.mutate(path)
        diff = (new - path) % 10
        assert set(diff.flatten().tolist()) <= {0, 1, 2, 8, 9}  # a shift in [-2, 2] modulo M
        changed += int((diff != 0).sum())
    rate = changed / (draws * 6)  # probability 1/(N L) = 1/6, and the shift is 0 one time in 5
    assert abs(rate - (1 / 6) * (4 / 5)) < 0.015


def test_tournament_keeps_the_better_path_on_a_constructed_case():
    stream = _stream(n_tasks=1)
    method = _pathnet(stream, hidden=(16,), n_modules=4, n_active=1, steps_per_path=10, lr=0.2)
    method.begin_task(stream[0])
    good, dead = torch.tensor([[0]]), torch.tensor([[1]])
    method.candidates = torch.stack([good, dead])
    with torch.no_grad():  # module 1 outputs relu(0) = 0 and gets no gradient: it cannot learn
        for p in method.net.layers[0][1].parameters():
            p.zero_()
    method.pair = [1, 0]  # the dead path is evaluated first: winning is not a matter of order
    losses = [float(method.observe(x, y, 0)) for x, y in list(_batches(stream[0], epochs=2))[:20]]
    dead_loss, good_loss = sum(losses[:10]) / 10, sum(losses[10:]) / 10
    assert good_loss < dead_loss - 0.1
    assert method.fitness[0].item() == pytest.approx(good_loss)  # the winner keeps its score
    assert method.fitness[1].item() == float("inf")  # the loser was replaced: not scored yet
    assert torch.equal(method.candidates[0], good)
    # the loser is the winner mutated (with N L = 1 every entry mutates by a shift in [-2, 2])
    assert int(method.candidates[1]) in {2, 3, 0, 1}
    assert method.pair is None and method.turn == 0
    # the direct rule: lower mean loss wins, a tie goes to the first of the pair
    method.candidates = torch.stack([good, dead])
    method.pair, method.fitness = [0, 1], torch.tensor([0.5, 0.5], dtype=torch.float64)
    method.tournament()
    assert torch.equal(method.candidates[0], good) and not torch.equal(method.candidates[1], dead)


def test_end_task_keeps_the_best_scored_path_and_freezes_its_modules():
    stream = _stream(n_tasks=2)
    method = _pathnet(stream)
    method.begin_task(stream[0])
    for x, y in list(_batches(stream[0]))[:4]:  # one full evaluation (3 steps) and one step of the next
        method.observe(x, y, 0)
    first, second = method.pair
    method.fitness[first] = 10.0  # pretend the first path did badly: the partial one must win
    best = method.candidates[second].clone()
    method.end_task(stream[0])
    assert torch.equal(method.paths[0], best)
    expected = torch.zeros(2, 4, dtype=torch.bool)
    for layer, row in enumerate(best.tolist()):
        expected[layer, row] = True
    assert torch.equal(method.frozen, expected)
    # before the next task, modules outside the frozen path are re-initialised, frozen ones kept
    states = {(k, m): _module_state(method, k, m) for k in range(2) for m in range(4)}
    method.begin_task(stream[1])
    for (layer, m), params in states.items():
        frozen = bool(expected[layer, m])
        assert _same(params, _module_state(method, layer, m)) == frozen
        assert all(p.requires_grad != frozen for p in method.net.layers[layer][m].parameters())


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_old_paths_are_frozen_and_old_predictions_bit_identical(scenario):
    stream = _stream(scenario)
    method = _pathnet(stream)
    x0 = stream[0].x_test
    seen = {}

    def record(t, result):
        path = method.paths[0]
        modules = [p.detach().clone() for layer, row in enumerate(path.tolist()) for m in row
                   for p in method.net.layers[layer][m].parameters()]
        head = [p.detach().clone() for p in method.net.heads[0].parameters()]
        seen[t] = (method.predict(x0, 0).clone(), modules, head, path.clone())

    result = engine.run(method, stream, epochs=3, batch_size=8, on_task_end=record)
    R = result.accuracy_matrix
    assert R[0, 0] > 0.8
    assert R[2, 0] == R[1, 0] == R[0, 0]
    for t in (1, 2):
        prediction, modules, head, path = seen[t]
        assert torch.equal(prediction, seen[0][0]) and torch.equal(path, seen[0][3])
        assert all(torch.equal(a, b) for a, b in zip(modules + head, seen[0][1] + seen[0][2], strict=True))
    assert result.method_memory[-1]["path_values"] == 3 * 2 * 2


def test_default_width_matches_the_models_parameter_count_as_the_hat_code():
    model = make_model("mlp", (1, 28, 28), 10, hidden=(100, 100))
    method = PathNet(model)  # M = 16: 16 (784 w + w) + 16 (w w + w) <= 88600 holds for w = 6, not 7
    method.generator = torch.Generator().manual_seed(0)
    method.build()
    widths = [modules[0].out_features for modules in method.net.layers]
    assert widths == [6, 6]
    assert sum(p.numel() for p in method.net.layers.parameters()) <= 784 * 100 + 100 + 100 * 100 + 100
    assert 16 * (784 * 7 + 7) + 16 * (7 * 7 + 7) > 784 * 100 + 100 + 100 * 100 + 100
    assert (method.n_modules, method.n_active, method.population, method.steps_per_path) == (16, 3, 2, 50)


def test_conv_bodies_get_conv_modules():
    stream = _stream(n_tasks=2)
    model = make_model("conv", stream.input_shape, stream.n_units, channels=(4,), hidden=8)
    method = make_method("pathnet", model, lr=0.1, n_modules=4, n_active=2, steps_per_path=3,
                         width_factor=0.5)
    result = engine.run(method, stream, epochs=2, batch_size=8)
    conv, linear = method.net.layers[0][0], method.net.layers[1][0]
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (2, 1, 3, 3)
    assert linear.weight.shape == (4, 2 * 4)  # reads the flattened 2 x 2 x 2 sum of conv modules
    assert result.accuracy_matrix[1, 0] == result.accuracy_matrix[0, 0]


def test_state_round_trip_in_the_middle_of_a_tournament():
    stream = _stream(n_tasks=2)
    method = _pathnet(stream)
    batches = list(_batches(stream[0], epochs=2))
    method.begin_task(stream[0])
    for x, y in batches[:7]:  # a tournament done, and one step into the next
        method.observe(x, y, 0)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = _pathnet(stream, seed=9)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    fresh.layout, fresh.train_mask = method.layout, method.train_mask  # (set by begin_task)
    for m in (method, fresh):
        losses = [float(m.observe(x, y, 0)) for x, y in batches[7:]]
        m.end_task(stream[0])
        m.begin_task(stream[1])
        losses += [float(m.observe(x, y, 1)) for x, y in _batches(stream[1])]
        m.end_task(stream[1])
        m.losses = losses
    assert fresh.losses == method.losses
    assert all(torch.equal(a, b) for a, b in zip(fresh.paths, method.paths, strict=True))
    for t in (0, 1):
        assert torch.equal(fresh.predict(stream[t].x_test, t), method.predict(stream[t].x_test, t))


def test_needs_the_task_id_and_rejects_bad_settings(toy_class_stream):
    method = _pathnet(toy_class_stream)
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(method, toy_class_stream)
    with pytest.raises(ValueError, match="pathnet needs the task id at test time"):
        method.begin_task(toy_class_stream[0])
    with pytest.raises(ValueError, match="pathnet needs the task id"):
        method.predict(toy_class_stream[0].x_test, None)
    with pytest.raises(ValueError, match="n_active=5 must not exceed n_modules=4"):
        _pathnet(toy_class_stream, n_active=5)
    with pytest.raises(ParamError, match="population=1"):
        METHODS.resolve("pathnet", {"population": "1"})
    batchnorm = Network(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4)), nn.Linear(4, 6))
    with pytest.raises(ValueError, match="pathnet supports bodies of nn.Linear and nn.Conv2d.*BatchNorm1d"):
        make_method("pathnet", batchnorm).begin_task(_stream()[0])
