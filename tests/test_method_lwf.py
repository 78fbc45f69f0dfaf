import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import directions_parts, toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import METHODS, make_method
from lifelong.methods.lwf import distillation_loss
from lifelong.models import make_model
from lifelong.params import ParamError


def lwf_on(stream, seed=0, hidden=(16,), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    return make_method("lwf", model, seed=seed, **{"lr": 0.1, **params})


def toy_stream(scenario):
    return build_stream("toy", scenario, toy_parts(disjoint=scenario != "domain"), (1, 4, 4))


def test_distillation_loss_is_eq2_of_the_paper_by_hand():
    old = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    new = [[1.0, 1.0, 0.0], [0.5, -0.5, 2.0]]

    def probabilities(row):  # the network's softmax
        exps = [math.exp(v) for v in row]
        return [e / sum(exps) for e in exps]

    def tempered(probs, T):  # Eq. 2: y'(i) = y(i)^(1/T) / sum_j y(j)^(1/T)
        powered = [p ** (1 / T) for p in probs]
        return [p / sum(powered) for p in powered]

    for T in (1.0, 2.0, 3.5):
        rows = []
        for o, n in zip(old, new, strict=True):
            y, y_hat = tempered(probabilities(o), T), tempered(probabilities(n), T)
            rows.append(-sum(a * math.log(b) for a, b in zip(y, y_hat, strict=True)))
        expected = sum(rows) / len(rows)
        got = distillation_loss(torch.tensor(new), torch.tensor(old), T).item()
        assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scenario, groups", [
    ("task", [[0, 1], [2, 3]]),  # one term per old head
    ("class", [[0, 1, 2, 3]]),  # one term over all old classes
    ("domain", [[0, 1]]),  # the shared head, once
])
def test_loss_is_cross_entropy_plus_lambda_times_eq2_over_each_group_of_old_units(scenario, groups):
    stream = toy_stream(scenario)
    method = lwf_on(stream, lamb=0.7, T=3.0)
    engine.run(method, stream.first(2), epochs=1, batch_size=8)
    after_task_1 = [p.detach().clone() for p in method.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after_task_1, method.old_model.parameters(), strict=True))
    method.begin_task(stream[2])
    x, y = stream[2].x_train[:8], stream[2].y_train[:8]
    with torch.no_grad():
        logits, old = method.model(x), method.old_model(x)
        expected = F.cross_entropy(mask_logits(logits, stream.layout.train_mask(2)), y)
        for units in groups:
            expected += 0.7 * distillation_loss(logits[:, units], old[:, units], 3.0)
    assert method.observe(x, y, 2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_distillation_is_smallest_where_the_old_head_outputs_equal_the_old_model():
    stream = toy_stream("task")
    method = lwf_on(stream, warmup_steps=0)
    engine.run(method, stream.first(1), epochs=2, batch_size=8)
    method.begin_task(stream[1])  # the network still equals the old one
    x, units, T = stream[1].x_train, [0, 1], 2.0
    old = method.old_model(x)[:, units]
    logits = method.model(x)[:, units].detach().requires_grad_(True)
    loss = distillation_loss(logits, old, T)
    (gradient,) = torch.autograd.grad(loss, logits)
    assert gradient.abs().max() < 1e-7  # a stationary point ...
    targets = F.softmax(old / T, dim=1)
    entropy = -(targets * targets.log()).sum(1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-6)  # ... at the cross-entropy's floor
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # any other outputs cost more; a shift of all of a head's logits does not
        moved = logits.detach() + 0.3 * torch.randn(logits.shape, generator=generator)
        assert distillation_loss(moved, old, T) > loss + 1e-4
        shifted = logits.detach() + torch.randn(len(x), 1, generator=generator)
        assert distillation_loss(shifted, old, T).item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_warm_up_trains_only_the_new_units_with_the_body_and_old_units_frozen(scenario):
    stream = toy_stream(scenario)
    method = lwf_on(stream, warmup_steps=1)
    engine.run(method, stream.first(1), epochs=2, batch_size=8)
    model = method.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # one warm-up step by hand: the new rows move by -lr * the gradient of the new task's loss
    model.eval()
    features = model.features(stream[1].x_train).detach()
    loss = F.cross_entropy(mask_logits(model.head(features), stream.layout.train_mask(1)),
                           stream[1].y_train)
    weight_grad, bias_grad = torch.autograd.grad(loss, [model.head.weight, model.head.bias])
    method.begin_task(stream[1])
    for name, p in model.named_parameters():
        if not name.startswith("head"):
            assert torch.equal(p, before[name]), name  # the body is frozen
    new, old = [2, 3], [0, 1]
    assert torch.equal(model.head.weight[old], before["head.weight"][old])
    assert torch.equal(model.head.bias[old], before["head.bias"][old])
    if scenario == "class":
        assert weight_grad[old].abs().max() > 1e-3  # the loss does reach the old rows here
    torch.testing.assert_close(model.head.weight[new], before["head.weight"][new] - 0.1 * weight_grad[new])
    torch.testing.assert_close(model.head.bias[new], before["head.bias"][new] - 0.1 * bias_grad[new])


def test_more_warm_up_lowers_the_new_task_loss_and_a_domain_task_has_no_warm_up():
    stream = toy_stream("task")
    losses = {}
    for steps in (0, 10, 100):
        method = lwf_on(stream, warmup_steps=steps)
        engine.run(method, stream.first(1), epochs=2, batch_size=8)
        method.begin_task(stream[1])
        with torch.no_grad():
            method.model.eval()
            logits = method.model(stream[1].x_train)
        losses[steps] = F.cross_entropy(mask_logits(logits, stream.layout.train_mask(1)),
                                        stream[1].y_train).item()
    assert losses[100] < losses[10] < losses[0]
    domain = toy_stream("domain")
    method = lwf_on(domain, warmup_steps=100)
    engine.run(method, domain.first(1), epochs=2, batch_size=8)
    before = [p.detach().clone() for p in method.model.parameters()]
    method.begin_task(domain[1])  # no unit of its own: nothing to warm up
    assert all(torch.equal(a, b) for a, b in zip(before, method.model.parameters(), strict=True))


@pytest.mark.parametrize("seed", [0, 1])
def test_lwf_forgets_less_than_finetune(seed):
    stream = build_stream("directions", "task", directions_parts(seed=seed), (1, 4, 4))
    bwt = {}
    for name in ("finetune", "lwf"):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(4,))
        method = make_method(name, model, seed=seed, lr=0.1)
        bwt[name] = engine.run(method, stream, epochs=10, batch_size=8, seed=seed).metrics["bwt"]
    assert bwt["finetune"] < -0.1  # the stream does make fine-tuning forget
    assert bwt["lwf"] > bwt["finetune"] + 0.05


def test_state_round_trip_restores_the_old_network():
    stream = toy_stream("task")
    method = lwf_on(stream)
    engine.run(method, stream.first(2), epochs=1, batch_size=8)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = lwf_on(stream, seed=99)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for a, b in zip(method.old_model.parameters(), fresh.old_model.parameters(), strict=True):
        assert torch.equal(a, b) and not b.requires_grad
    assert not fresh.old_model.training
    per_net = 16 * 16 + 16 + 16 * 6 + 6
    assert fresh.memory()["old_model_parameters"] == per_net
    assert fresh.memory()["old_model_bytes"] == 4 * per_net
    x, y = stream[2].x_train[:8], stream[2].y_train[:8]
    for m in (method, fresh):
        m.set_training(True)
        m.begin_task(stream[2])
    assert method.observe(x, y, 2).item() == fresh.observe(x, y, 2).item()
    assert all(torch.equal(a, b) for a, b in zip(method.model.parameters(), fresh.model.parameters(),
                                                 strict=True))


def test_defaults_and_bad_parameters():
    defaults = METHODS.resolve("lwf", {})
    assert defaults == {"lr": 0.05, "lamb": 1.0, "T": 2.0, "warmup_steps": 100}
    with pytest.raises(ParamError, match="T=0"):
        METHODS.resolve("lwf", {"T": "0"})
    with pytest.raises(ParamError, match="lamb=-1"):
        METHODS.resolve("lwf", {"lamb": "-1"})
    with pytest.raises(ParamError, match="warmup_steps=-2"):
        METHODS.resolve("lwf", {"warmup_steps": "-2"})
