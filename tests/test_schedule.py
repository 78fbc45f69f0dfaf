"""The HAT code's validation schedule: split, lr decay, early stop and best-epoch restore."""

import numpy as np
import pytest
import torch
from conftest import resumed_after_first_task

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.experiments.run_config import RunConfig
from lifelong.methods import METHODS, make_method
from lifelong.models import make_model
from lifelong.params import ParamError
from lifelong.schedule import ValidationSchedule, validation_loss

SCHEDULE = ValidationSchedule(valid_fraction=0.25, lr_patience=2, lr_factor=2.0, lr_min=0.02)


class FakeMethod:
    """Just enough of a method for `engine.Plateau`: an lr and a record of the scales set."""

    def __init__(self, lr):
        self.lr, self.scales, self.tensor = lr, [], torch.zeros(1)

    def set_lr_scale(self, scale):
        self.scales.append(scale)

    def weights(self):
        return [self.tensor]


#: every method that trains the toy MLP (the transformer-only ones have their own tests)
ANY_MODEL_METHODS = [n for n in METHODS.names if METHODS.get(n).requires_model is None]


def test_plateau_decays_and_stops_as_the_hat_code_does():
    # lr 0.1, patience 2, factor 2, lr_min 0.02. Epochs 1-2 improve; 3-4 do not -> lr 0.05;
    # 5-6 do not -> 0.025 (still >= 0.02); 7-8 do not -> 0.0125 < 0.02: stop after epoch 8.
    method = FakeMethod(lr=0.1)
    plateau = engine.Plateau(SCHEDULE, method)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 0.5]
    stops = []
    for epoch, loss in enumerate(losses, start=1):
        method.tensor.fill_(epoch)
        if plateau.stop(loss):
            stops.append(epoch)
            break
    assert stops == [8]
    assert method.scales == [1.0, 0.5, 0.25]
    plateau.restore_best()
    assert method.tensor.item() == 2.0  # epoch 2 had the best validation loss
    assert method.scales[-1] == 1.0  # the next task starts at the method's own lr


def test_an_improvement_resets_the_patience():
    method = FakeMethod(lr=0.1)
    plateau = engine.Plateau(SCHEDULE, method)
    for loss in [1.0, 1.1, 0.9, 1.1, 0.8, 1.1]:  # never two bad epochs in a row
        assert not plateau.stop(loss)
    assert method.scales == [1.0]


@pytest.mark.parametrize("values, message", [
    ({"valid_fraction": 0.0}, "valid_fraction"),
    ({"valid_fraction": 1.0}, "valid_fraction"),
    ({"lr_patience": 0}, "lr_patience"),
    ({"lr_factor": 1.0}, "lr_factor"),
    ({"lr_min": 0.0}, "lr_min"),
    ({"patience": 3}, "unknown field 'patience'"),
])
def test_bad_schedules_are_refused(values, message):
    with pytest.raises(ParamError, match=message):
        ValidationSchedule.from_dict(values)


def test_split_is_disjoint_deterministic_and_sized(toy_task_stream):
    task = toy_task_stream[1]
    kept, x_valid, y_valid = SCHEDULE.split(task, seed=4)
    n = len(task.y_train)
    assert len(y_valid) == int(0.25 * n) and len(kept.y_train) == n - len(y_valid)
    rows = {tuple(row.tolist()) for row in task.x_train.flatten(1)}
    train_rows = {tuple(row.tolist()) for row in kept.x_train.flatten(1)}
    valid_rows = {tuple(row.tolist()) for row in x_valid.flatten(1)}
    assert train_rows | valid_rows == rows and not train_rows & valid_rows
    again, x_again, _ = SCHEDULE.split(task, seed=4)
    assert torch.equal(x_again, x_valid) and torch.equal(again.x_train, kept.x_train)
    assert not torch.equal(SCHEDULE.split(task, seed=5)[1], x_valid)
    assert kept.x_test is task.x_test  # the test set is untouched


def test_split_refuses_a_fraction_that_leaves_nothing(toy_task_stream):
    with pytest.raises(ParamError, match="leaves no validation"):
        ValidationSchedule(valid_fraction=0.001).split(toy_task_stream[0], seed=0)


def _method(name, stream, seed=3):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(16,))
    return make_method(name, model, seed=seed, lr=0.1)


@pytest.mark.parametrize("name", ANY_MODEL_METHODS)
def test_each_task_ends_on_its_best_validation_epoch(name, toy_task_stream, monkeypatch):
    """The restored weights score the lowest validation loss the schedule saw, for every method."""
    seen: list[float] = []
    real = engine.validation_loss

    def recording(method, task, x, y):
        seen.append(real(method, task, x, y))
        return seen[-1]

    monkeypatch.setattr(engine, "validation_loss", recording)
    stream = toy_task_stream.first(1)
    method = _method(name, stream)
    # end_task may change the weights on purpose (PackNet prunes, IMM merges): check before it
    at_end = {}
    monkeypatch.setattr(method, "end_task", lambda task: at_end.setdefault(
        "loss", real(method, task, *SCHEDULE.split(stream[0], seed=3)[1:])))
    result = engine.run(method, stream, epochs=12, batch_size=8, seed=3, schedule=SCHEDULE)
    assert result.epochs_run == [len(seen)] and 1 <= len(seen) <= 12
    assert at_end["loss"] == pytest.approx(min(seen), rel=1e-6, abs=1e-7)


def test_training_stops_early_once_the_lr_falls_below_its_floor():
    # random labels: the validation loss stops improving at once, so patience 1 and factor 10
    # take lr 0.5 below 0.01 within a handful of epochs instead of the 500 allowed
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 1, 4, 4, generator=generator), torch.randint(0, 2, (200,), generator=generator)
    stream = build_stream("noise", "task", [("noise", x[:160], y[:160], x[160:], y[160:])], (1, 4, 4))
    schedule = ValidationSchedule(valid_fraction=0.25, lr_patience=1, lr_factor=10.0, lr_min=0.01)
    model = make_model("mlp", (1, 4, 4), stream.n_units, seed=0, hidden=(16,))
    method = make_method("finetune", model, seed=0, lr=0.5)
    result = engine.run(method, stream, epochs=500, batch_size=8, seed=0, schedule=schedule)
    assert result.epochs_run[0] < 30


def test_lr_scale_multiplies_every_group_and_returns_to_the_method_lr(toy_task_stream):
    method = _method("finetune", toy_task_stream)
    method.begin_task(toy_task_stream[0])
    method.set_lr_scale(0.25)
    assert [g["lr"] for g in method.optimizer.param_groups] == [pytest.approx(0.025)]
    method.set_lr_scale(1.0)
    assert [g["lr"] for g in method.optimizer.param_groups] == [pytest.approx(0.1)]


def test_hat_restores_its_task_embeddings_too(toy_task_stream):
    method = _method("hat", toy_task_stream)
    method.begin_task(toy_task_stream[0])
    weights = method.weights()
    embeddings = method.embedding(0)
    assert all(any(e is w for w in weights) for e in embeddings)


@pytest.mark.parametrize("name", ["finetune", "hat", "packnet", "ewc", "joint"])
def test_resume_with_a_schedule_matches_the_uninterrupted_run(name, toy_task_stream):
    stream = toy_task_stream
    full = engine.run(_method(name, stream), stream, epochs=6, batch_size=8, seed=3, schedule=SCHEDULE)
    resumed = resumed_after_first_task(lambda: _method(name, stream), stream, epochs=6, batch_size=8,
                                       seed=3, schedule=SCHEDULE)
    np.testing.assert_array_equal(resumed.accuracy_matrix, full.accuracy_matrix)
    assert resumed.epochs_run == full.epochs_run


def test_run_config_records_the_schedule_only_when_there_is_one():
    plain = RunConfig(benchmark="split-digits", method="finetune")
    assert "schedule" not in plain.resolved()  # runs made before schedules keep their keys
    scheduled = RunConfig(benchmark="split-digits", method="finetune", schedule={"valid_fraction": 0.1})
    assert scheduled.resolved()["schedule"] == {"valid_fraction": 0.1, "lr_patience": 5,
                                                "lr_factor": 3.0, "lr_min": 1e-4}
    assert scheduled.key() != plain.key()
    with pytest.raises(ParamError, match="valid_fraction"):
        RunConfig(benchmark="split-digits", method="finetune", schedule={"valid_fraction": 2}).resolved()


def test_validation_loss_is_the_masked_cross_entropy(toy_task_stream):
    method = _method("finetune", toy_task_stream)
    task = toy_task_stream[1]
    logits = method.predict(task.x_train[:10], task.id)
    expected = torch.nn.functional.cross_entropy(logits[:, list(task.layout.task_units[1])],
                                                 task.y_train[:10] - task.layout.task_units[1][0])
    got = validation_loss(method, task, task.x_train[:10], task.y_train[:10])
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_hat_validation_loss_adds_its_regulariser_at_smax(toy_task_stream):
    """As the HAT code's eval: cross-entropy + c * mean attention (task 0: no unit is taken yet)."""
    method = _method("hat", toy_task_stream)
    task = toy_task_stream[0]
    method.begin_task(task)
    x, y = task.x_train[:10], task.y_train[:10]
    ce = torch.nn.functional.cross_entropy(method.predict(x, 0)[:, [0, 1]], y)
    attention = torch.cat([torch.sigmoid(method.smax * e.detach()) for e in method.embedding(0)])
    expected = float(ce) + method.c * float(attention.mean())
    assert validation_loss(method, task, x, y) == pytest.approx(expected, rel=1e-5)
