import io

import pytest
import torch
import torch.nn.functional as F
from conftest import directions_parts, toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import METHODS, make_method
from lifelong.models import make_model
from lifelong.params import ParamError


def toy_stream(scenario="task"):
    return build_stream("toy", scenario, toy_parts(disjoint=scenario != "domain"), (1, 4, 4))


def imm_on(stream, seed=0, hidden=(3,), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    return make_method("imm", model, seed=seed, **{"lr": 0.1, **params})


def train_without_end(method, task, epochs=2, batch_size=8):
    method.set_training(True)
    method.begin_task(task)
    for _ in range(epochs):
        for x, y in zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True):
            method.observe(x, y, task.id)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def mixing_weights(n_tasks, alpha):
    """The weights of tasks 0..n-1: uniform, or alpha for the newest and the rest shared."""
    if alpha is None or n_tasks == 1:
        return [1.0 / n_tasks] * n_tasks
    return [(1.0 - alpha) / (n_tasks - 1)] * (n_tasks - 1) + [alpha]


def by_hand_fisher(model, x, y, mask, eps):
    """(1/N) sum_n (d log p(y_n | x_n) / d theta)^2 + eps, one example at a time."""
    sums = [torch.zeros_like(p) for p in model.parameters()]
    for n in range(len(x)):
        model.zero_grad()
        F.cross_entropy(mask_logits(model(x[n:n + 1]), mask), y[n:n + 1]).backward()
        for s, p in zip(sums, model.parameters(), strict=True):
            s += p.grad ** 2
    model.zero_grad()
    return [s / len(x) + eps for s in sums]


@pytest.mark.parametrize("alpha", [None, 0.6])
def test_mean_imm_predicts_with_the_weighted_mean_of_the_trained_parameters(alpha):
    stream = toy_stream("domain")
    method = imm_on(stream, mode="mean", alpha=alpha)
    trained = []
    for task in stream:
        train_without_end(method, task)
        if trained:  # the task trained from the previous task's own parameters, not the merge
            assert any(not torch.equal(a, b) for a, b in zip(trained[-1], snapshot(method.model),
                                                            strict=True))
        trained.append(snapshot(method.model))
        method.end_task(task)
        weights = mixing_weights(len(trained), alpha)
        for i, p in enumerate(method.model.parameters()):
            expected = sum(w * mu[i] for w, mu in zip(weights, trained, strict=True))
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
    assert len(trained) == 3 and not torch.equal(trained[2][0], method.model.body[1].weight)


def test_weight_transfer_starts_each_task_from_the_previous_trained_or_merged_network():
    stream = toy_stream("task")
    for transfer in ("trained", "merged"):
        method = imm_on(stream, transfer=transfer)
        for task in stream.tasks[:2]:
            train_without_end(method, task)
            trained = snapshot(method.model)
            method.end_task(task)
            merged = snapshot(method.model)
        method.begin_task(stream[2])
        start = trained if transfer == "trained" else merged
        assert all(torch.equal(a, b) for a, b in zip(start, method.model.parameters(), strict=True))
        assert all(torch.equal(a, b) for a, b in zip(start, method.anchor, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(trained, merged, strict=True))


def test_loss_adds_lambda_times_the_squared_distance_to_the_previous_parameters():
    stream = toy_stream("task")
    method = imm_on(stream, lamb=0.5)
    train_without_end(method, stream[0])
    method.end_task(stream[0])
    mu0 = snapshot(method.model)
    method.begin_task(stream[1])
    with torch.no_grad():
        for p in method.model.parameters():
            p += 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]
    with torch.no_grad():
        ce = F.cross_entropy(mask_logits(method.model(x), stream.layout.train_mask(1)), y)
        distance = sum(((p - m) ** 2).sum() for p, m in zip(method.model.parameters(), mu0, strict=True))
    assert distance > 0
    assert method.observe(x, y, 1).item() == pytest.approx((ce + 0.5 * distance).item(), rel=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.7])
def test_mode_imm_merge_is_the_fisher_weighted_mean_on_a_tiny_network(alpha):
    stream = toy_stream("task")
    eps = 1e-8
    method = imm_on(stream, mode="mode", alpha=alpha, eps=eps)
    trained, fishers = [], []
    for task in stream:
        train_without_end(method, task)
        model = method.model
        trained.append(snapshot(model))
        # the labels the method will draw: the same generator state, the same softmax
        probe = torch.Generator()
        probe.set_state(method.generator.get_state())
        mask = stream.layout.train_mask(task.id)
        model.eval()
        with torch.no_grad():
            probs = F.softmax(mask_logits(model(task.x_train), mask), dim=1)
        labels = torch.multinomial(probs.double(), 1, generator=probe).squeeze(1)
        assert set(labels.tolist()) <= set(stream.layout.task_units[task.id])
        fishers.append(by_hand_fisher(model, task.x_train, labels, mask, eps))
        model.train()
        method.end_task(task)
        weights = mixing_weights(len(trained), alpha)
        for i, p in enumerate(method.model.parameters()):
            numerator = sum(w * f[i] * mu[i] for w, f, mu in zip(weights, fishers, trained, strict=True))
            denominator = sum(w * f[i] for w, f in zip(weights, fishers, strict=True))
            torch.testing.assert_close(p.detach(), numerator / denominator, rtol=1e-5, atol=1e-6)
    for i, total in enumerate(method.fisher_sum):
        torch.testing.assert_close(total, sum(f[i] for f in fishers), rtol=1e-5, atol=1e-9)
    # each head is merged almost as its own task trained it (no other task informs its rows)
    head = method.model.head.weight
    for t, units in enumerate(stream.layout.task_units):
        torch.testing.assert_close(head[list(units)].detach(), trained[t][-2][list(units)],
                                   rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["mean", "mode"])
@pytest.mark.parametrize("seed", [0, 1])
def test_imm_forgets_less_than_finetune(mode, seed):
    stream = build_stream("directions", "task", directions_parts(seed=seed), (1, 4, 4))
    bwt = {}
    for name, params in (("finetune", {}), ("imm", {"mode": mode})):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(4,))
        method = make_method(name, model, seed=seed, lr=0.1, **params)
        bwt[name] = engine.run(method, stream, epochs=10, batch_size=8, seed=seed).metrics["bwt"]
    assert bwt["finetune"] < -0.1
    assert bwt["imm"] > bwt["finetune"] + 0.05


@pytest.mark.parametrize("mode, transfer, stored, fisher", [
    ("mean", "trained", 2, 0),  # sum of the old tasks' parameters + the last trained ones
    ("mean", "merged", 1, 0),
    ("mode", "trained", 2, 1),  # sum of F_k mu_k + the last trained ones; sum of F_k
    ("mode", "merged", 1, 1),
])
def test_memory_reports_the_running_sums_and_the_fisher(mode, transfer, stored, fisher):
    stream = toy_stream("task")
    method = imm_on(stream, hidden=(16,), mode=mode, transfer=transfer)
    result = engine.run(method, stream, epochs=1, batch_size=8)
    per_net = 16 * 16 + 16 + 16 * 6 + 6
    for memory in result.method_memory:  # the same after every task: no per-task copies
        assert memory["parameters"] == per_net
        assert memory["stored_parameters"] == stored * per_net
        assert memory["stored_parameter_bytes"] == 4 * stored * per_net
        assert memory["fisher_values"] == fisher * per_net
        assert memory["fisher_bytes"] == 4 * fisher * per_net


def test_state_round_trip_with_fisher_sums_and_the_label_generator():
    stream = toy_stream("class")
    method = imm_on(stream, mode="mode")
    engine.run(method, stream.first(2), epochs=1, batch_size=8)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = imm_on(stream, seed=99, mode="mode")
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    assert fresh.n_merged == 2
    for m in (method, fresh):
        train_without_end(m, stream[2], epochs=1)
        m.end_task(stream[2])  # draws Fisher labels from the restored generator
    for a, b in zip(method.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(method.fisher_sum, fresh.fisher_sum, strict=True):
        assert torch.equal(a, b)


def test_defaults_and_bad_parameters():
    assert METHODS.resolve("imm", {}) == {"lr": 0.1, "mode": "mean", "lamb": 1e-4, "alpha": None,
                                          "transfer": "trained", "eps": 1e-8}
    with pytest.raises(ParamError, match="mode='median'"):
        METHODS.resolve("imm", {"mode": "median"})
    with pytest.raises(ParamError, match="alpha=0"):
        METHODS.resolve("imm", {"alpha": "0"})
    with pytest.raises(ParamError, match="alpha=1.5"):
        METHODS.resolve("imm", {"alpha": "1.5"})
    assert METHODS.resolve("imm", {"alpha": "1"})["alpha"] == 1.0
    with pytest.raises(ParamError, match="lamb=-1"):
        METHODS.resolve("imm", {"lamb": "-1"})
    with pytest.raises(ParamError, match="transfer='last'"):
        METHODS.resolve("imm", {"transfer": "last"})
    with pytest.raises(ParamError, match="eps=0"):
        METHODS.resolve("imm", {"eps": "0"})
