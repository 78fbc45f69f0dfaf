"""Adapter-BERT NCL (``adapter``) and ONE (``adapter-one``) on the tiny random BERT."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import resumed_after_first_task

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import make_method
from lifelong.methods.adapter import HoulsbyAdapter, layer_norms
from lifelong.methods.optimizers import BERT_ADAM_EPS
from lifelong.models import make_model
from lifelong.params import ParamError
from lifelong.schedule import ValidationSchedule

torch.set_num_threads(1)
L = 12


def text_stream(n_tasks=2, n=64, seed=0, scenario="task"):
    """Two-class tasks of random token ids; a task-specific cue token in positions 1-4 gives the class."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for t in range(n_tasks):
        labels = torch.randint(0, 2, (n,), generator=generator)
        ids = torch.randint(20, 300, (n, L), generator=generator)
        ids[:, 1:5] = (1 + 2 * t + labels)[:, None]
        lengths = torch.randint(6, L + 1, (n,), generator=generator)
        ids[torch.arange(L)[None, :] >= lengths[:, None]] = 0  # padding
        offset = 2 * t if scenario == "task" else 0
        cut = n * 3 // 4
        parts.append((f"text-{t}", ids[:cut], labels[:cut] + offset, ids[cut:], labels[cut:] + offset))
    return build_stream("toy-text", scenario, parts, (L,))


def tiny(stream, seed=0, **kwargs):
    return make_model("transformer", stream.input_shape, stream.n_units, seed=seed, encoder="tiny", **kwargs)


def adapter(name, stream, seed=0, model_seed=0, **params):
    params = {"lr": 1e-2, "adapter_size": 32, **params}
    return make_method(name, tiny(stream, model_seed), seed=seed, **params)


def train_task(method, task, epochs=1, batch_size=8):
    method.set_training(True)
    method.begin_task(task)
    for _ in range(epochs):
        method.begin_epoch(0, -(-len(task.y_train) // batch_size))
        for x, y in zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True):
            method.observe(x, y, task.id)
    method.end_task(task)
    method.set_training(False)


def encoder_own(model):
    return dict(model.encoder.own_parameters())


# ----------------------------------------------------------------------------- the adapter
def test_houlsby_adapter_is_the_bottleneck_with_a_residual_and_a_near_identity_init():
    generator = torch.Generator().manual_seed(0)
    wide = HoulsbyAdapter(64, 32, "relu", init_std=1e-3)
    wide.reset_parameters(generator)
    for p in (wide.down.weight.detach(), wide.up.weight.detach()):
        assert 1.9e-3 < p.abs().max() <= 2e-3  # normal(0, 1e-3) truncated at two std
        assert 0.83e-3 < float(p.std()) < 0.93e-3  # whose std is 0.88e-3
    assert torch.equal(wide.down.bias, torch.zeros(32)) and torch.equal(wide.up.bias, torch.zeros(64))
    module = HoulsbyAdapter(6, 3, "relu")
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
        h = torch.randn(2, 5, 6, generator=generator)
        inner = torch.relu(h @ module.down.weight.T + module.down.bias)
        expected = h + inner @ module.up.weight.T + module.up.bias
        assert torch.allclose(module(h, 3), expected, atol=1e-6)
        gelu = HoulsbyAdapter(6, 3, "gelu")
        gelu.load_state_dict(module.state_dict())
        assert torch.allclose(gelu(h), h + F.gelu(h @ module.down.weight.T + module.down.bias)
                              @ module.up.weight.T + module.up.bias, atol=1e-6)


def test_adapters_sit_after_both_projections_and_start_near_identity():
    stream = text_stream()
    model = tiny(stream)
    bare = copy.deepcopy(model).eval()
    method = make_method("adapter", model, seed=0, adapter_size=64)  # the defaults otherwise
    ids = stream[0].x_test
    with torch.no_grad():
        reference = bare(ids)
        method.set_training(False)
        logits = method.predict(ids, 0)
    assert len(method.slots) == 4 and [s.kind for s in method.slots] == ["attention", "ffn"] * 2
    assert all(isinstance(s.plugin, HoulsbyAdapter) for s in method.slots)
    assert all(s.plugin.down.out_features == 64 for s in method.slots)
    difference = (logits - reference).abs().max()
    assert 0 < difference < 1e-3 * reference.abs().max()  # present, but nearly the identity
    with torch.no_grad():  # a non-small adapter does change the output: the test can fail
        method.slots[0].plugin.down.weight.normal_(0.0, 1.0)
        method.slots[0].plugin.up.weight.normal_(0.0, 1.0)
        assert (method.predict(ids, 0) - reference).abs().max() > 1e-2


def test_only_adapters_layernorms_and_head_train():
    stream = text_stream()
    method = adapter("adapter", stream)
    model = method.model
    method.setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_task(method, stream[0])
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    norms = {n for n, _ in model.named_parameters() if "LayerNorm" in n and ".encoder.layer." in n}
    plugins = {n for n in before if ".plugin." in n}
    assert moved == plugins | norms | {"head.weight", "head.bias"}
    assert len(norms) == 2 * 2 * 2 and len(plugins) == 4 * 4
    assert all(p.grad is None for n, p in encoder_own(model).items() if "LayerNorm" not in n)
    # the LayerNorms of the embeddings stay frozen; train_layernorm=False freezes the others too
    frozen = adapter("adapter", stream, train_layernorm=False)
    frozen.setup()
    before = {n: p.detach().clone() for n, p in frozen.model.named_parameters()}
    train_task(frozen, stream[0])
    moved = {n for n, p in frozen.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == plugins | {"head.weight", "head.bias"}
    assert all(not norm.weight.requires_grad for norm in layer_norms(frozen.model))


def test_one_step_is_adam_with_decoupled_decay_that_spares_other_tasks_head_rows():
    stream = text_stream()
    method = adapter("adapter", stream, weight_decay=0.5, lr=1e-2)
    method.set_training(True)
    method.begin_task(stream[1])
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]
    probe = copy.deepcopy(method.model)
    F.cross_entropy(mask_logits(probe(x, 1), stream[1].train_mask), y).backward()
    before = {n: p.detach().clone() for n, p in method.model.named_parameters()}
    method.observe(x, y, 1)
    lr, wd = 1e-2, 0.5
    grads = {n: p.grad for n, p in probe.named_parameters() if p.grad is not None}
    assert set(grads) == set(method.trained())
    for name, p in method.model.named_parameters():
        if name not in grads:
            assert torch.equal(p, before[name])
            continue
        g = grads[name]
        adam = lr * g / (g.abs() + BERT_ADAM_EPS)  # Adam's first step (bias-corrected)
        decay = 0.0 if name.endswith("bias") or "LayerNorm" in name else lr * wd
        if name == "head.weight":  # task 1's rows only
            decay = decay * stream.layout.task_mask(1).float()[:, None]
        expected = before[name] * (1 - decay) - adam
        assert torch.allclose(p, expected, rtol=1e-5, atol=1e-7), name
    head = method.model.head.weight
    assert torch.equal(head[:2], before["head.weight"][:2])  # task 0's rows: no gradient, no decay
    assert not torch.equal(head[2:], before["head.weight"][2:])


# ----------------------------------------------------------------------------- NCL vs ONE
def test_one_keeps_task_0_bit_identical_while_ncl_forgets():
    stream = text_stream()
    x0, units = stream[0].x_test, list(stream.layout.task_units[0])
    outputs = {}
    for name in ("adapter", "adapter-one"):
        method = adapter(name, stream)
        train_task(method, stream[0], epochs=2)
        first = method.predict(x0, 0)[:, units].clone()
        train_task(method, stream[1], epochs=2)
        outputs[name] = (first, method.predict(x0, 0)[:, units])
    assert torch.equal(*outputs["adapter-one"])
    assert not torch.allclose(*outputs["adapter"], atol=1e-4)


def test_one_gives_every_task_its_own_fresh_set():
    stream = text_stream()
    method = adapter("adapter-one", stream)
    train_task(method, stream[0])
    train_task(method, stream[1])
    assert set(method.sets) == {0, 1}
    fresh = [method.fresh(t) for t in (0, 1, 2)]
    down = next(n for n in fresh[0] if n.endswith("plugin.down.weight"))
    assert not torch.equal(fresh[0][down], fresh[1][down])  # drawn from (seed, task)
    assert torch.equal(fresh[2][down], method.fresh(2)[down])
    norm = next(n for n in fresh[0] if "LayerNorm" in n)
    assert torch.equal(fresh[1][norm], method.initial[norm])  # the rest starts from the initial model
    assert not torch.equal(method.sets[1][norm], method.initial[norm])  # ... and then trains
    # an untrained task predicts with a fresh set without storing it
    method.predict(stream[0].x_test, 5)
    assert set(method.sets) == {0, 1}
    memory = method.memory()
    per_set = sum(v.numel() for v in method.sets[0].values())
    assert memory["task_sets"] == 2 and memory["set_values"] == 2 * per_set
    assert memory["adapter_parameters"] == 4 * (32 * 32 + 32 + 32 * 32 + 32)


@pytest.mark.parametrize("name", ["adapter", "adapter-one"])
def test_a_two_task_text_stream_is_learned(name):
    stream = text_stream()
    result = engine.run(adapter(name, stream), stream, epochs=8, batch_size=8)
    R = result.accuracy_matrix
    assert R[0, 0] >= 0.9 and R[1, 1] >= 0.9
    assert result.untrained_accuracy.max() < 0.8
    if name == "adapter-one":
        assert R[1, 0] == R[0, 0]


@pytest.mark.parametrize("name", ["adapter", "adapter-one"])
def test_domain_scenario_shares_the_head(name):
    stream = text_stream(scenario="domain")
    method = adapter(name, stream)
    result = engine.run(method, stream, epochs=8, batch_size=8)
    assert stream.n_units == 2 and result.accuracy_matrix[1, 1] >= 0.9
    if name == "adapter-one":  # its own copy of the shared head per task
        assert result.accuracy_matrix[1, 0] == result.accuracy_matrix[0, 0]
        assert not torch.equal(method.sets[0]["head.weight"], method.sets[1]["head.weight"])


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["adapter", "adapter-one"])
def test_resume_from_saved_state_matches_uninterrupted_run(name):
    stream = text_stream(n_tasks=3, n=32)
    full = engine.run(adapter(name, stream, seed=3), stream, epochs=2, batch_size=8, seed=3)
    # the fresh method's model (the random tiny encoder included) comes from another seed
    seeds = iter([0, 9])
    resumed = resumed_after_first_task(lambda: adapter(name, stream, seed=3, model_seed=next(seeds)),
                                       stream, epochs=2, batch_size=8, seed=3)
    np.testing.assert_array_equal(resumed.accuracy_matrix, full.accuracy_matrix)
    assert resumed.train_loss == full.train_loss


@pytest.mark.parametrize("name", ["adapter", "adapter-one", "adapter-hat"])
def test_each_task_ends_on_its_best_validation_epoch(name, monkeypatch):
    """tests/test_schedule.py's check on the tiny BERT: the restored weights score the lowest
    validation loss the schedule saw."""
    schedule = ValidationSchedule(valid_fraction=0.25, lr_patience=2, lr_factor=2.0, lr_min=1e-3)
    seen = []
    real = engine.validation_loss

    def recording(method, task, x, y):
        seen.append(real(method, task, x, y))
        return seen[-1]

    monkeypatch.setattr(engine, "validation_loss", recording)
    stream = text_stream().first(1)
    method = adapter(name, stream, seed=3, lr=0.3)  # large: the validation loss goes up and down
    at_end = {}
    monkeypatch.setattr(method, "end_task", lambda task: at_end.setdefault(
        "loss", real(method, task, *schedule.split(stream[0], seed=3)[1:])))
    result = engine.run(method, stream, epochs=8, batch_size=8, seed=3, schedule=schedule)
    assert result.epochs_run == [len(seen)] and 1 <= len(seen) <= 8
    assert min(seen) < seen[-1]  # the best epoch is not the last: there is something to restore
    assert at_end["loss"] == pytest.approx(min(seen), rel=1e-6, abs=1e-7)


# ----------------------------------------------------------------------------- bad input
def test_bad_parameters_and_models_are_rejected():
    stream = text_stream()
    model = tiny(stream)
    for bad in ({"adapter_size": 0}, {"activation": "tanh"}, {"init_std": 0.0}, {"lr": -1.0},
                {"weight_decay": -0.1}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            make_method("adapter", model, **bad)
    with pytest.raises(ValueError, match="activation"):
        HoulsbyAdapter(4, 2, "tanh")
    mlp = make_method("adapter", make_model("mlp", (1, 4, 4), 4, hidden=(8,)))
    with pytest.raises(ValueError, match="make_model\\('transformer'"):
        mlp.predict(torch.zeros(2, 1, 4, 4), 0)
    free = make_method("adapter-one", tiny(stream, freeze=False))
    with pytest.raises(ValueError, match="freeze=True"):
        free.begin_task(stream[0])
    one = adapter("adapter-one", stream)
    with pytest.raises(ValueError, match="task id"):
        one.predict(stream[0].x_test, None)
    classes = text_stream(scenario="class")
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(adapter("adapter-one", classes), classes)
