"""Stable SGD: the per-task learning-rate decay, momentum reset per epoch, schedules, bad params."""

import pytest
import torch
import torch.nn.functional as F

from lifelong import engine
from lifelong.methods import make_method
from lifelong.models import make_model
from lifelong.params import ParamError


def _stable(stream, seed=0, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(8,))
    return make_method("stable-sgd", model, seed=seed, **params)


def test_learning_rate_decays_per_task_as_the_code_with_its_floor(toy_task_stream):
    # the code: lr = max(args.lr * gamma ** task_id, min_lr) with task ids from 1
    method = _stable(toy_task_stream, lr=0.2, gamma=0.5, min_lr=0.04)
    expected = [0.2 * 0.5, 0.2 * 0.25, 0.04]  # 0.2 * 0.125 = 0.025 is below the floor
    seen = []
    for task in toy_task_stream:
        method.begin_task(task)
        seen.append(method.optimizer.param_groups[0]["lr"])
        assert method.optimizer.param_groups[0]["momentum"] == 0.8
        method.end_task(task)
    assert seen == pytest.approx(expected)


def test_step_is_sgd_with_momentum_at_the_task_rate_and_momentum_restarts_each_epoch(toy_task_stream):
    method = _stable(toy_task_stream, lr=0.1, gamma=0.5, momentum=0.8)
    task = toy_task_stream[1]
    method.begin_task(task)
    method.begin_epoch(0, 2)
    rate = 0.1 * 0.5 ** 2
    w = method.model.head.weight
    x, y = task.x_train[:8], task.y_train[:8]

    def gradient():
        weight = w.detach().clone().requires_grad_()
        features = method.model.body(x)
        logits = F.linear(features, weight, method.model.head.bias)
        masked = logits.masked_fill(~task.train_mask, -1e10)
        return torch.autograd.grad(F.cross_entropy(masked, y), weight)[0]

    w0 = w.detach().clone()
    g1 = gradient()
    method.observe(x, y, 1)
    torch.testing.assert_close(w.detach(), w0 - rate * g1)
    w1 = w.detach().clone()
    g2 = gradient()
    method.observe(x, y, 1)
    torch.testing.assert_close(w.detach(), w1 - rate * (0.8 * g1 + g2))  # heavy ball
    method.begin_epoch(1, 2)  # the code builds a new optimizer every epoch: no momentum left
    w2 = w.detach().clone()
    g3 = gradient()
    method.observe(x, y, 1)
    torch.testing.assert_close(w.detach(), w2 - rate * g3)


def test_engine_run_trains_the_last_task_at_the_decayed_rate_and_a_schedule_scales_it(toy_task_stream):
    method = _stable(toy_task_stream, lr=0.3, gamma=0.8)
    result = engine.run(method, toy_task_stream, epochs=2, batch_size=8)
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * 0.8 ** 3)
    assert result.accuracy_matrix[2, 2] > 0.9
    method.set_lr_scale(1 / 3)  # a validation schedule's decay applies on top of the task's rate
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * 0.8 ** 3 / 3)
    method.begin_epoch(1, 10)  # and survives the per-epoch optimizer
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * 0.8 ** 3 / 3)


def test_no_decay_keeps_the_rate_and_dropout_comes_from_the_model(toy_task_stream):
    model = make_model("mlp", (1, 4, 4), 6, hidden=(8,), dropout=0.25)
    method = make_method("stable-sgd", model, lr=0.01, gamma=1.0)
    for task in toy_task_stream:
        method.begin_task(task)
        assert method.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.25 for m in method.model.modules())


@pytest.mark.parametrize("values, message", [
    ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"), ({"min_lr": -1e-3}, "min_lr"), ({"lr": 0.0}, "lr"),
])
def test_bad_hyper_parameters_are_rejected(values, message):
    model = make_model("mlp", (1, 4, 4), 6, hidden=(8,))
    with pytest.raises(ParamError, match=message):
        make_method("stable-sgd", model, **values)
