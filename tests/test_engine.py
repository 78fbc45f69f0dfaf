
import numpy as np
import pytest
import torch
from conftest import resumed_after_first_task, toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import METHODS, Method, make_method
from lifelong.models import make_model


class RuleMethod(Method):
    """Knows each task's rule exactly once it has trained on it; outputs zeros otherwise."""

    task_conditioned = True

    def __init__(self, layout_units):
        self.units = layout_units
        self.learnt: set[int] = set()
        self.model = torch.nn.Identity()

    def begin_task(self, task):
        pass

    def observe(self, x, y, task_id):
        return torch.zeros(())

    def end_task(self, task):
        self.learnt.add(task.id)

    def predict(self, x, task_id=None):
        logits = torch.zeros(len(x), sum(len(u) for u in self.units))
        for t in self.learnt:
            on_task = x[:, 0, 1, t % 4] > 0.5
            label = (x[:, 0, 0, 0] > 1.0).long() + self.units[t][0]
            logits[on_task, label[on_task]] = 10.0
        return logits

    def memory(self):
        return {}


#: every method that trains the toy MLP (the transformer-only ones have their own tests)
ANY_MODEL_METHODS = [n for n in METHODS.names if METHODS.get(n).requires_model is None]


def test_accuracy_matrix_of_a_known_case(toy_task_stream):
    stream = toy_task_stream
    method = RuleMethod(stream.layout.task_units)
    result = engine.run(method, stream, batch_size=7)
    share0 = np.array([(t.y_test == 2 * t.id).float().mean().item() for t in stream])
    expected = np.array([[1.0, share0[1], share0[2]],
                         [1.0, 1.0, share0[2]],
                         [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(result.accuracy_matrix, expected)
    np.testing.assert_allclose(result.untrained_accuracy, share0)
    # task-agnostic: unlearnt tasks fall to unit 0, which only task 0's zeros carry
    agnostic = result.other_accuracy_matrix
    assert result.other_kind == "task_agnostic"
    np.testing.assert_allclose(agnostic[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(agnostic[2], [1.0, 1.0, 1.0])
    assert len(result.train_seconds) == 3 and result.peak_memory_mb > 0
    record = result.to_dict()
    assert record["metrics"]["acc"] == pytest.approx(1.0)
    assert record["metrics"]["bwt"] == pytest.approx(0.0)
    assert record["metrics"]["fwt"] == pytest.approx(0.0)  # R[j-1, j] == b[j] for every j
    assert record["metrics"]["acc_task_agnostic"] == pytest.approx(1.0)


def _run(name, stream, seed=0, epochs=2, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(16,))
    method = make_method(name, model, seed=seed, lr=0.1, **params)
    return engine.run(method, stream, epochs=epochs, batch_size=8, seed=seed), method


def test_finetune_forgets_conflicting_tasks_while_independent_does_not():
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True),
                          (1, 4, 4))
    finetune, _ = _run("finetune", stream, epochs=6)
    independent, _ = _run("independent", stream, epochs=6)
    assert finetune.accuracy_matrix[0, 0] > 0.9 and independent.accuracy_matrix[0, 0] > 0.9
    assert finetune.accuracy_matrix[1, 0] < 0.2  # the second task's rule overwrote the first
    assert independent.accuracy_matrix[1, 0] == independent.accuracy_matrix[0, 0]
    assert finetune.metrics["bwt"] < -0.7 and independent.metrics["bwt"] == 0.0


def test_joint_learns_every_task_and_restart_keeps_only_the_last(toy_class_stream):
    joint, method = _run("joint", toy_class_stream)
    assert joint.metrics["acc"] > 0.9
    assert method.memory()["stored_examples"] == 3 * 90
    restart, _ = _run("restart", toy_class_stream)
    assert restart.accuracy_matrix[2, 2] > 0.9 and restart.metrics["acc"] < 0.6


def test_frozen_trains_only_the_head_after_the_first_task(toy_task_stream):
    model = make_model("mlp", (1, 4, 4), 6, hidden=(16,))
    method = make_method("frozen", model, lr=0.1)
    stream = toy_task_stream
    engine.run(method, stream.first(1), batch_size=8)
    body = [p.detach().clone() for p in model.body.parameters()]
    head = model.head.weight.detach().clone()
    method.begin_task(stream[1])
    for x, y in zip(stream[1].x_train.split(8), stream[1].y_train.split(8), strict=False):
        method.observe(x, y, 1)
    assert all(torch.equal(a, b) for a, b in zip(body, model.body.parameters(), strict=False))
    assert not torch.equal(head, model.head.weight)


def test_same_seed_same_matrix_other_seed_other_matrix(toy_task_stream):
    a, _ = _run("finetune", toy_task_stream, seed=1)
    b, _ = _run("finetune", toy_task_stream, seed=1)
    c, _ = _run("finetune", toy_task_stream, seed=2)
    np.testing.assert_array_equal(a.accuracy_matrix, b.accuracy_matrix)
    assert a.train_loss == b.train_loss and a.train_loss != c.train_loss


@pytest.mark.parametrize("name", ANY_MODEL_METHODS)
def test_resume_from_saved_state_matches_uninterrupted_run(name, toy_task_stream):
    stream = toy_task_stream
    full, _ = _run(name, stream, seed=3)
    # run the first task, save the method state, restore it into a method built around a model
    # from another seed, finish the stream
    seeds = iter([3, 99])

    def build():
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=next(seeds), hidden=(16,))
        return make_method(name, model, seed=3, lr=0.1)

    resumed = resumed_after_first_task(build, stream, epochs=2, batch_size=8, seed=3)
    np.testing.assert_array_equal(resumed.accuracy_matrix, full.accuracy_matrix)
    assert resumed.train_loss == full.train_loss


def test_class_scenario_rejects_methods_that_need_the_task_id(toy_class_stream):
    model = make_model("mlp", (1, 4, 4), 6)
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(make_method("independent", model), toy_class_stream)


def test_bad_run_arguments(toy_task_stream):
    method = make_method("finetune", make_model("mlp", (1, 4, 4), 6))
    with pytest.raises(ValueError, match="epochs=0"):
        engine.run(method, toy_task_stream, epochs=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        engine.run(method, toy_task_stream, batch_size=0)


def test_memory_is_reported(toy_task_stream):
    result, method = _run("independent", toy_task_stream)
    per_net = 16 * 16 + 16 + 16 * 6 + 6
    assert [m["parameters"] for m in result.method_memory] == [3 * per_net] * 3
    assert result.method_memory[-1]["parameter_bytes"] == 3 * per_net * 4


def test_result_round_trips_through_its_dict(toy_task_stream):
    result, _ = _run("finetune", toy_task_stream)
    partial = engine.Result.from_dict(result.to_dict())
    np.testing.assert_array_equal(partial.accuracy_matrix, result.accuracy_matrix)
    np.testing.assert_array_equal(partial.other_accuracy_matrix, result.other_accuracy_matrix)
    assert partial.to_dict() == result.to_dict()
