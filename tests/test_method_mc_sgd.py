"""MC-SGD: the line objective and its step by hand, the memory, the two solutions, forgetting."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import directions_parts, toy_parts
from torch import nn

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import make_method
from lifelong.models import make_model
from lifelong.models.network import Network
from lifelong.params import ParamError


def _mc(stream, seed=0, hidden=(16,), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    return make_method("mc-sgd", model, seed=seed, **params)


def _linear_case(**params):
    """A linear softmax model (4 inputs, 3 units), its previous MC solution, old and new data."""
    generator = torch.Generator().manual_seed(0)
    model = Network(nn.Sequential(nn.Flatten()), nn.Linear(4, 3))
    method = make_method("mc-sgd", model, **params)
    method.merged = copy.deepcopy(model)
    with torch.no_grad():
        for net in (model, method.merged):
            net.head.weight.copy_(torch.randn(3, 4, generator=generator))
            net.head.bias.copy_(torch.randn(3, generator=generator))
    old = (torch.randn(5, 4, generator=generator), torch.tensor([0, 1, 2, 0, 1]), None)
    new = (torch.randn(6, 4, generator=generator), torch.tensor([2, 2, 1, 0, 1, 0]), None)
    return method, old, new


def _hand_line(anchor_w, anchor_b, w, b, x, y, alphas, chain):
    """Mean over the points of the cross-entropy, and of its gradient in (w, b), by the formulas:
    at a point (W, c) the mean loss's gradient is (P - Y)' X / N for W and the mean of (P - Y)
    for c; the chain rule through anchor + a (w - anchor) multiplies it by a."""
    loss, grad_w, grad_b = 0.0, np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(3)[y]
    for a in alphas:
        W, c = anchor_w + a * (w - anchor_w), anchor_b + a * (b - anchor_b)
        z = x @ W.T + c
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss += -np.log(p[np.arange(len(y)), y]).mean() / len(alphas)
        scale = (a if chain else 1.0) / len(alphas)
        grad_w += scale * (p - onehot).T @ x / len(y)
        grad_b += scale * (p - onehot).mean(0)
    return loss, grad_w, grad_b


@pytest.mark.parametrize("line_gradient", ["points", "objective"])
def test_line_objective_and_step_direction_match_a_hand_computation(line_gradient):
    method, old, new = _linear_case(line_samples=2, line_gradient=line_gradient)
    previous = {k: v.detach().clone() for k, v in method.merged.named_parameters()}
    continual = {k: v.detach().clone() for k, v in method.model.named_parameters()}
    # continual differs from previous; evaluate at some w between and beyond them
    with torch.no_grad():
        for k in continual:
            continual[k] += 0.7
    weights = {k: previous[k] + 0.3 * (continual[k] - previous[k]) + 0.05 for k in previous}
    loss, direction = method.line_loss([(previous, old), (continual, new)], weights)
    alphas = [0.0, 0.5, 1.0]  # line_samples=2: the code's np.arange(0.0, 1.01, 0.5)
    chain = line_gradient == "objective"
    total, gw, gb = 0.0, 0.0, 0.0
    for anchor, (x, y, _) in ((previous, old), (continual, new)):
        part = _hand_line(anchor["head.weight"].double().numpy(), anchor["head.bias"].double().numpy(),
                          weights["head.weight"].double().numpy(), weights["head.bias"].double().numpy(),
                          x.double().numpy(), y.numpy(), alphas, chain)
        total, gw, gb = total + part[0], gw + part[1], gb + part[2]
    assert loss == pytest.approx(total, rel=1e-5)
    np.testing.assert_allclose(direction["head.weight"].numpy(), gw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(direction["head.bias"].numpy(), gb, rtol=1e-4, atol=1e-6)
    if chain:  # the exact gradient of the objective: autograd through the lines agrees
        w = {k: v.clone().requires_grad_() for k, v in weights.items()}
        objective = 0.0
        for anchor, (x, y, _) in ((previous, old), (continual, new)):
            for a in alphas:
                point = {k: anchor[k] + a * (w[k] - anchor[k]) for k in w}
                logits = x @ point["head.weight"].T + point["head.bias"]
                objective = objective + F.cross_entropy(logits, y) / len(alphas)
        objective.backward()
        torch.testing.assert_close(direction["head.weight"], w["head.weight"].grad)


def test_one_mc_step_starts_on_the_line_and_moves_by_mc_lr_times_the_direction():
    method, old, new = _linear_case(line_samples=4, init_position=0.25, mc_lr=0.1, mc_epochs=1)
    with torch.no_grad():
        method.model.head.weight.add_(1.0)  # w^_t: the continual solution moved away from w-_{t-1}
    previous = {k: v.detach().clone() for k, v in method.merged.named_parameters()}
    continual = {k: v.detach().clone() for k, v in method.model.named_parameters()}
    start = {k: previous[k] + 0.25 * (continual[k] - previous[k]) for k in previous}
    _, direction = method.line_loss([(previous, old), (continual, new)], start)
    before, after = method.connect(old, new)
    for name, p in method.merged.named_parameters():
        torch.testing.assert_close(p.detach(), start[name] - 0.1 * direction[name])
    # the continual model is left as it was
    torch.testing.assert_close(method.model.head.weight.detach(), continual["head.weight"])
    assert after == pytest.approx(method.line_loss([(previous, old), (continual, new)],
                                                   dict(method.merged.named_parameters()))[0])
    assert after < before  # a small step down the objective


def test_minibatch_pass_steps_on_each_lines_minibatch_then_on_the_longer_line_alone():
    """mc_batch_size=5 over 5 old and 6 new examples: step 1 on old[perm[:5]] and new[perm[:5]],
    step 2 on the new line's last example alone (the code's last train_task_LMC_offline)."""
    method, old, new = _linear_case(line_samples=2, init_position=0.5, mc_lr=0.2, momentum=0.0,
                                    mc_batch_size=5)
    with torch.no_grad():
        method.model.head.weight.add_(1.0)
    method.generator = torch.Generator().manual_seed(3)
    replay = torch.Generator().manual_seed(3)
    perm_old, perm_new = torch.randperm(5, generator=replay), torch.randperm(6, generator=replay)
    previous = {k: v.detach().clone() for k, v in method.merged.named_parameters()}
    continual = {k: v.detach().clone() for k, v in method.model.named_parameters()}
    w = {k: previous[k] + 0.5 * (continual[k] - previous[k]) for k in previous}

    def part(examples, index):
        return examples[0][index], examples[1][index], None

    _, d1 = method.line_loss([(previous, part(old, perm_old)), (continual, part(new, perm_new[:5]))], w)
    w = {k: w[k] - 0.2 * d1[k] for k in w}
    _, d2 = method.line_loss([(continual, part(new, perm_new[5:]))], w)
    w = {k: w[k] - 0.2 * d2[k] for k in w}
    method.connect(old, new)
    for name, p in method.merged.named_parameters():
        torch.testing.assert_close(p.detach(), w[name])


def test_minibatches_as_large_as_the_sets_make_the_full_batch_step():
    results = []
    for batch in (None, 64):
        method, old, new = _linear_case(line_samples=3, mc_lr=0.1, mc_batch_size=batch)
        with torch.no_grad():
            method.model.head.weight.add_(1.0)
        method.generator = torch.Generator().manual_seed(0)
        method.connect(old, new)
        results.append(method.merged.head.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_exact_gradient_steps_lower_the_line_objective_and_the_old_memory_loss():
    stream = build_stream("dir", "domain", directions_parts(n_tasks=2), (1, 4, 4))
    method = _mc(stream, hidden=(4,), lr=0.1, line_gradient="objective", mc_epochs=30, mc_lr=0.05,
                 init_position=0.5, memory_per_task=40)
    engine.run(method, stream, epochs=3, batch_size=8)
    start, end = method.last_line_loss
    assert end < 0.8 * start
    # on the memory of the old task the MC solution beats the continual one that forgot it
    x, y, tasks = method.episodic.all()
    old = tasks == 0
    with torch.no_grad():
        merged_loss = F.cross_entropy(method.merged(x[old]), y[old])
        continual_loss = F.cross_entropy(method.model(x[old]), y[old])
    assert merged_loss < continual_loss


def test_mc_sgd_forgets_less_than_finetune():
    stream = build_stream("dir", "domain", directions_parts(n_tasks=3), (1, 4, 4))
    results = {}
    for name, params in (("finetune", {"lr": 0.1}), ("mc-sgd", {})):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(4,))
        method = make_method(name, model, **params)
        results[name] = engine.run(method, stream, epochs=2, batch_size=8)
    finetune, mc = results["finetune"].metrics, results["mc-sgd"].metrics
    assert finetune["forgetting"] > 0.2  # the narrow body forgets the first two rules
    assert mc["forgetting"] < finetune["forgetting"] - 0.15
    assert mc["acc"] > finetune["acc"]


def test_memory_holds_training_examples_of_each_task_and_predict_uses_the_mc_solution(toy_task_stream):
    stream = toy_task_stream
    method = _mc(stream, memory_per_task=7, lr=0.1)
    result = engine.run(method, stream, epochs=1, batch_size=8)
    assert [m["stored_examples"] for m in result.method_memory] == [7, 14, 21]
    assert result.method_memory[-1]["stored_bytes"] == 3 * 7 * (16 * 4 + 8 + 8)
    x, y, tasks = method.episodic.all()
    assert tasks.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    assert not torch.equal(x[:7], stream[0].x_train[:7])  # drawn at random, not the first ones
    for row, label, t in zip(x, y, tasks, strict=True):  # a real example of its task, its label
        task = stream[int(t)]
        match = (task.x_train == row).flatten(1).all(1)
        assert match.any() and (task.y_train[match] == label).all()
    # old examples keep their own task's units in the task-incremental scenario
    _, _, masks = method.old_examples(stream[2])
    assert len(masks) == 14
    assert masks[0].nonzero().squeeze(1).tolist() == [0, 1]
    assert masks[7].nonzero().squeeze(1).tolist() == [2, 3]
    probe = stream[0].x_test[:5]
    torch.testing.assert_close(method.predict(probe, 0), method.merged(probe))
    assert not torch.equal(method.predict(probe, 0), method.model(probe))
    method.begin_task(stream[2])  # while a task trains, predict shows the continual model
    torch.testing.assert_close(method.predict(probe, 0), method.model(probe))


@pytest.mark.parametrize("continue_from", ["continual", "mc"])
def test_the_next_continual_model_starts_from_the_chosen_solution(continue_from, toy_task_stream):
    method = _mc(toy_task_stream, lr=0.1, continue_from=continue_from)
    engine.run(method, toy_task_stream.first(2), epochs=1, batch_size=8)
    same = all(torch.equal(a, b) for a, b in zip(method.model.parameters(), method.merged.parameters(),
                                                  strict=True))
    assert same == (continue_from == "mc")


def test_continual_learning_rate_decays_per_task_from_the_first(toy_task_stream):
    method = _mc(toy_task_stream, lr=0.05, gamma=0.5, min_lr=0.01)
    rates = []
    for task in toy_task_stream:
        method.begin_task(task)
        rates.append(method.optimizer.param_groups[0]["lr"])
        method.end_task(task)
    assert rates == pytest.approx([0.05, 0.025, 0.0125])
    assert method.task_lr(3) == pytest.approx(0.01)  # 0.00625 is below the floor


def test_works_in_the_class_scenario():
    stream = build_stream("toy", "class", toy_parts(), (1, 4, 4))
    result = engine.run(_mc(stream, lr=0.1), stream, epochs=2, batch_size=8)
    assert result.accuracy_matrix[0, 0] > 0.9 and np.isfinite(result.accuracy_matrix).all()


@pytest.mark.parametrize("values, message", [
    ({"line_samples": 0}, "line_samples"), ({"init_position": 1.5}, "init_position"),
    ({"init_position": -0.1}, "init_position"), ({"mc_lr": 0.0}, "mc_lr"), ({"mc_epochs": 0}, "mc_epochs"),
    ({"mc_batch_size": 0}, "mc_batch_size"),
    ({"memory_per_task": 0}, "memory_per_task"), ({"current_examples": 0}, "current_examples"),
    ({"gamma": 0.0}, "gamma"), ({"momentum": 1.0}, "momentum"), ({"line_gradient": "mean"}, "line_gradient"),
    ({"continue_from": "init"}, "continue_from"), ({"lr": -0.1}, "lr"),
])
def test_bad_hyper_parameters_are_rejected(values, message):
    model = make_model("mlp", (1, 4, 4), 6, hidden=(8,))
    with pytest.raises(ParamError, match=message):
        make_method("mc-sgd", model, **values)
