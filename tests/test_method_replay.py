import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream, make_stream
from lifelong.benchmarks.stream import mask_logits
from lifelong.buffers import ReservoirBuffer, TaskRingBuffer
from lifelong.methods import make_method
from lifelong.models import make_model


def replay_on(stream, seed=0, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(16,))
    return make_method("replay", model, seed=seed, **{"lr": 0.1, **params})


def train(method, stream, epochs=2, seed=0):
    return engine.run(method, stream, epochs=epochs, batch_size=8, seed=seed)


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_each_example_is_scored_over_its_replay_mask(scenario):
    stream = build_stream("toy", scenario, toy_parts(n_tasks=4), (1, 4, 4))
    method = replay_on(stream, memory_size=40)
    train(method, stream.first(2))  # the memory now holds tasks 0 and 1
    method.begin_task(stream[2])
    layout = stream.layout
    for t in range(3):
        assert torch.equal(method.sample_masks[t], layout.replay_mask(t, 2))
    if scenario == "task":  # an old example keeps its own task's two units
        assert method.sample_masks[0].nonzero().squeeze(1).tolist() == [0, 1]
    else:  # every unit seen so far (of tasks 0, 1, 2), not task 3's
        assert all(row.nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4, 5] for row in method.sample_masks)
    x, y = stream[2].x_train[:8], stream[2].y_train[:8]
    # the replay minibatch observe will draw: the same generator state, the same buffer
    probe = torch.Generator()
    probe.set_state(method.generator.get_state())
    xm, ym, tm = method.episodic.sample(8, probe)
    assert set(tm.tolist()) == {0, 1}
    tasks = torch.cat([torch.full((8,), 2), tm])
    logits = method.model(torch.cat([x, xm]))
    masks = torch.stack([layout.replay_mask(int(t), 2) for t in tasks])
    expected = F.cross_entropy(mask_logits(logits, masks), torch.cat([y, ym]))
    assert method.observe(x, y, 2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert method.episodic.seen == 2 * 90 * 2 + 8  # the current minibatch was written afterwards


def test_first_step_has_nothing_to_replay_then_replays_a_minibatch_of_the_given_size():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    method = replay_on(stream, memory_size=30, replay_batch_size=3)
    method.begin_task(stream[0])
    x, y = stream[0].x_train, stream[0].y_train
    expected = F.cross_entropy(mask_logits(method.model(x[:8]), stream[0].train_mask), y[:8])
    assert method.observe(x[:8], y[:8], 0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert len(method.episodic) == 8
    calls = []
    original = method.model.forward
    method.model.forward = lambda inputs, task_id=None: calls.append(len(inputs)) or original(inputs)
    method.observe(x[8:16], y[8:16], 0)
    assert calls == [8 + 3]


def test_memory_sizes_counts_and_bytes():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))  # 90 training examples per task
    per_example = 16 * 4 + 8 + 8  # float32 input, int64 label, int64 task id
    method = replay_on(stream)  # the paper's default: one example per class of each task
    result = train(method, stream)
    assert isinstance(method.episodic, ReservoirBuffer) and method.episodic.capacity == 6
    assert [m["stored_examples"] for m in result.method_memory] == [6, 6, 6]
    assert result.method_memory[-1]["stored_bytes"] == 6 * per_example
    method = replay_on(stream, memory_size=100)
    result = train(method, stream, epochs=1)
    assert [m["stored_examples"] for m in result.method_memory] == [90, 100, 100]
    assert result.method_memory[0]["stored_bytes"] == 100 * per_example
    method = replay_on(stream, buffer="ring", memory_size=7)
    result = train(method, stream)
    assert isinstance(method.episodic, TaskRingBuffer)
    assert [m["stored_examples"] for m in result.method_memory] == [7, 14, 21]
    assert result.method_memory[-1]["stored_bytes"] == 21 * per_example
    assert torch.bincount(method.episodic.all()[2]).tolist() == [7, 7, 7]
    method = replay_on(stream, buffer="ring")  # default: one per class, i.e. 2 per task
    train(method, stream)
    assert method.episodic.per_task == 2 and len(method.episodic) == 6


def test_reservoir_holds_a_uniform_share_of_every_task():
    stream = build_stream("toy", "task", toy_parts(n=400), (1, 4, 4))  # 300 training examples each
    method = replay_on(stream, memory_size=150)
    train(method, stream, epochs=1)
    counts = torch.bincount(method.episodic.all()[2], minlength=3)
    assert counts.sum() == 150 and (counts - 50).abs().max() <= 15  # binomial sd ~5.8


def test_same_seed_same_run_other_seed_other_replay_draws():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    a = train(replay_on(stream, seed=1), stream, seed=1)
    b = train(replay_on(stream, seed=1), stream, seed=1)
    np.testing.assert_array_equal(a.accuracy_matrix, b.accuracy_matrix)
    assert a.train_loss == b.train_loss
    # same initialisation and batch order, only the method's replay generator differs
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=1, hidden=(16,))
    c = train(make_method("replay", model, seed=2, lr=0.1), stream, seed=1)
    assert c.train_loss[0] != a.train_loss[0]


def test_bad_parameters_are_rejected():
    from lifelong.methods import METHODS
    from lifelong.params import ParamError

    with pytest.raises(ParamError, match="buffer='fifo'"):
        METHODS.resolve("replay", {"buffer": "fifo"})
    with pytest.raises(ParamError, match="memory_size=0"):
        METHODS.resolve("replay", {"memory_size": "0"})
    assert METHODS.resolve("replay", {"memory_size": "none"})["memory_size"] is None


def test_class_incremental_split_digits_replay_remembers_where_finetune_forgets():
    stream = make_stream("split-digits", scenario="class", seed=0)
    accs = {}
    for name, params in [("finetune", {}), ("replay", {"memory_size": 100})]:
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0)
        method = make_method(name, model, seed=0, **params)
        result = engine.run(method, stream, epochs=5, batch_size=10, seed=0)
        accs[name] = result.metrics["acc"]
    assert accs["finetune"] < 0.25  # only the last task's two classes: about 1/5 of the digits
    assert accs["replay"] > 0.7
