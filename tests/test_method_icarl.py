import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream, make_stream
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import make_method
from lifelong.methods.icarl import NO_MEAN, ICaRL, herding
from lifelong.models import make_model
from lifelong.models.network import Network


def test_herding_picks_exemplars_whose_running_mean_tracks_the_class_mean():
    # 1-d features 0, 1, 2, 3, 10: mean 3.2. Step k picks x minimising |3.2 - (x + sum) / k|:
    # k=1: 3 (0.2); k=2: 2 (mean 2.5, where 10 would give 6.5); k=3: 1 (2.0 vs 5.0 for 10);
    # k=4: 10 (4.0, where 0 gives 1.5: |0.8| < |1.7|); k=5: 0.
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding(features, 5).tolist() == [3, 2, 1, 4, 0]
    assert herding(features, 2).tolist() == [3, 2]  # a prefix: reducing keeps the best ones
    # 2-d unit vectors at 0, 30, 60, 90 degrees and one at 45: the 45-degree one is nearest the mean
    angles = torch.tensor([0.0, 30.0, 60.0, 90.0, 45.0]) * math.pi / 180
    unit = torch.stack([angles.cos(), angles.sin()], 1)
    order = herding(unit, 5).tolist()
    assert order[0] == 4 and sorted(order) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="m=6"):
        herding(features, 6)


CLASS_2 = torch.tensor([[0.0, -1.0], [1.0, -1.0], [2.0, -2.0]])


def tiny_icarl(memory_size: int = 100) -> tuple[ICaRL, object]:
    """Identity features in 2-d (the body only flattens), classes 0, 1 then 2."""
    parts = [
        ("a", torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-2.0, 0.0]]),
         torch.tensor([0, 0, 1, 1]), torch.zeros(1, 2), torch.tensor([0])),
        ("b", CLASS_2, torch.tensor([2, 2, 2]), torch.zeros(1, 2), torch.tensor([2])),
    ]
    stream = build_stream("tiny", "class", parts, (2,))
    model = Network(nn.Flatten(), nn.Linear(2, 3))
    return ICaRL(model, memory_size=memory_size), stream


def test_nearest_mean_of_exemplars_against_a_hand_computation():
    method, stream = tiny_icarl()
    x = torch.tensor([[3.0, 4.0], [-2.0, 1.0]])
    assert torch.equal(method.predict(x), torch.full((2, 3), NO_MEAN))  # nothing stored yet
    method.begin_task(stream[0])
    method.end_task(stream[0])  # no training: exemplars and means of classes 0 and 1 only
    # class 0: normalised (1, 0) and (0, 1), mean (0.5, 0.5), re-normalised (r, r) with r = 1/sqrt 2;
    # class 1: (-1, 0) twice. Inputs normalised: (0.6, 0.8) and (-2, 1)/sqrt 5.
    r = 1 / math.sqrt(2)
    u, v = -2 / math.sqrt(5), 1 / math.sqrt(5)
    expected = torch.tensor([
        [-math.hypot(0.6 - r, 0.8 - r), -math.hypot(0.6 + 1, 0.8), NO_MEAN],
        [-math.hypot(u - r, v - r), -math.hypot(u + 1, v), NO_MEAN],
    ])
    logits = method.predict(x)
    torch.testing.assert_close(logits, expected)
    assert logits.argmax(1).tolist() == [0, 1]
    # task-aware evaluation of the second task (unit 2 alone) still picks unit 2 over masked units
    assert mask_logits(logits, stream.layout.eval_mask(1)).argmax(1).tolist() == [2, 2]
    method.begin_task(stream[1])
    method.end_task(stream[1])
    normalised = F.normalize(CLASS_2, dim=1)
    mean2 = F.normalize(normalised.mean(0), dim=0)
    torch.testing.assert_close(method.class_means[2], mean2)
    torch.testing.assert_close(method.predict(torch.tensor([[0.0, -2.0]]))[0, 2],
                               -torch.dist(torch.tensor([0.0, -1.0]), mean2))


def test_exemplar_sets_are_reduced_to_their_first_m_under_a_fixed_memory():
    method, stream = tiny_icarl(memory_size=4)
    method.begin_task(stream[0])
    method.end_task(stream[0])  # m = 4 // 2 = 2: every example of classes 0 and 1
    assert sorted(method.exemplar_y.tolist()) == [0, 0, 1, 1]
    first = {c: method.exemplar_x[method.exemplar_y == c][method.exemplar_rank[method.exemplar_y == c]
                                                          .argsort()] for c in (0, 1)}
    method.begin_task(stream[1])
    method.end_task(stream[1])  # m = 4 // 3 = 1: the first exemplar of each class survives
    assert method.exemplar_y.tolist() == [0, 1, 2]
    for c in (0, 1):
        assert torch.equal(method.exemplar_x[method.exemplar_y == c], first[c][:1])
    # class 2's normalised examples (0,-1), (1,-1)/sqrt 2 twice have mean (0.47, -0.80): the first
    # (1,-1) is 0.26 from it, (0,-1) 0.51
    assert torch.equal(method.exemplar_x[2], torch.tensor([1.0, -1.0]))
    assert method.exemplar_task.tolist() == [0, 0, 1]
    memory = method.memory()
    assert memory["stored_examples"] == 3
    assert memory["stored_bytes"] == 3 * (2 * 4 + 8 + 8 + 8) + 3 * 2 * 4  # exemplars + 3 means


def test_training_set_is_new_data_plus_exemplars_and_distillation_targets_are_the_old_outputs():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
    method = make_method("icarl", model, seed=0, memory_size=30)
    engine.run(method, stream.first(1), epochs=2, batch_size=8)
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    method.begin_task(stream[1])
    x, y, ids = method.training_data(stream[1])
    assert len(y) == 90 + 30 and ids.tolist() == [1] * 90 + [0] * 30
    assert torch.equal(x[:90], stream[1].x_train) and set(y[90:].tolist()) == {0, 1}
    for step in range(3):  # the network moves on, the distillation targets do not
        batch = slice(8 * step, 8 * step + 16)
        method.observe(x[batch], y[batch], ids[batch])
    reference = make_model("mlp", stream.input_shape, stream.n_units, seed=5, hidden=(16,))
    reference.load_state_dict(after_first)
    xb, yb = x[80:100], y[80:100]  # new examples and exemplars
    targets = method.targets(xb, yb)
    with torch.no_grad():
        old = torch.sigmoid(reference(xb))
    torch.testing.assert_close(targets[:, :2], old[:, :2])  # old classes: q = g_old(x)
    torch.testing.assert_close(targets[:, 2:4], F.one_hot(yb, 6)[:, 2:4].float())  # new: δ
    assert not torch.equal(model.state_dict()["head.weight"], after_first["head.weight"])
    # the loss is the binary cross-entropy over the seen units (0..3), summed, per example
    logits = model(xb)[:, :4]
    expected = F.binary_cross_entropy_with_logits(logits, targets[:, :4], reduction="sum") / 20
    assert method.observe(xb, yb, ids[80:100]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_memory_counts_and_state_round_trip():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
    method = make_method("icarl", model, seed=0, memory_size=60)
    result = engine.run(method, stream, epochs=1, batch_size=8)
    # m = 60 // 2 = 30, 60 // 4 = 15, 60 // 6 = 10 per class
    assert [m["stored_examples"] for m in result.method_memory] == [60, 60, 60]
    assert torch.bincount(method.exemplar_y).tolist() == [10] * 6
    per_example = 16 * 4 + 3 * 8  # input, label, task id, rank
    assert result.method_memory[-1]["stored_bytes"] == 60 * per_example + 6 * 16 * 4
    # parameters: the network and the frozen copy for distillation
    assert result.method_memory[-1]["parameters"] == 2 * (16 * 16 + 16 + 16 * 6 + 6)
    fresh = make_method("icarl", make_model("mlp", stream.input_shape, stream.n_units, seed=9,
                                            hidden=(16,)), memory_size=60)
    fresh.load_state_dict(method.state_dict())
    for task in stream:
        torch.testing.assert_close(fresh.predict(task.x_test), method.predict(task.x_test))
    assert fresh.old_model is not None and not fresh.old_model.training


def test_task_incremental_streams_are_scored_over_the_task_units():
    stream = build_stream("toy", "task", toy_parts(), (1, 4, 4))
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
    result = engine.run(make_method("icarl", model, lr=0.1, memory_size=60), stream, epochs=2,
                        batch_size=8)
    assert result.metrics["acc"] > 0.9 and result.other_kind == "task_agnostic"


def test_shared_units_and_too_small_memories_are_rejected():
    domain = build_stream("toy", "domain", toy_parts(disjoint=False), (1, 4, 4))
    model = make_model("mlp", domain.input_shape, domain.n_units, hidden=(16,))
    with pytest.raises(ValueError, match="own output units"):
        engine.run(make_method("icarl", model), domain)
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    model = make_model("mlp", stream.input_shape, stream.n_units, hidden=(16,))
    with pytest.raises(ValueError, match="memory_size=5 cannot hold one exemplar for each of the 6"):
        engine.run(make_method("icarl", model, memory_size=5), stream)


def test_same_config_same_run():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    results = []
    for _ in range(2):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=1, hidden=(16,))
        results.append(engine.run(make_method("icarl", model, seed=1, memory_size=30), stream,
                                  epochs=2, batch_size=8, seed=1))
    np.testing.assert_array_equal(results[0].accuracy_matrix, results[1].accuracy_matrix)
    assert results[0].train_loss == results[1].train_loss


def test_class_incremental_split_digits_icarl_remembers_where_finetune_forgets():
    stream = make_stream("split-digits", scenario="class", seed=0)
    accs = {}
    for name, params in [("finetune", {}), ("icarl", {"memory_size": 200})]:
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0)
        method = make_method(name, model, seed=0, **params)
        result = engine.run(method, stream, epochs=5, batch_size=10, seed=0)
        accs[name] = result.metrics["acc"]
    assert accs["finetune"] < 0.25  # only the last task's two classes: about 1/5 of the digits
    assert accs["icarl"] > 0.8
