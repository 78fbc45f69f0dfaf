"""CTR (Ke et al., NeurIPS 2021): capsules, transfer routing, HAT-masked task modules on a frozen BERT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import resumed_after_first_task

pytest.importorskip("transformers")

from lifelong import engine  # noqa: E402
from lifelong.benchmarks import build_stream  # noqa: E402
from lifelong.methods import ctr as C  # noqa: E402
from lifelong.methods import make_method  # noqa: E402
from lifelong.models import make_model  # noqa: E402
from lifelong.params import ParamError  # noqa: E402
from lifelong.schedule import ValidationSchedule  # noqa: E402

torch.set_num_threads(1)

L = 8
SMALL = {"adapter_size": 16}  # a narrow task module keeps the tiny runs fast


def text_stream(n_tasks=2, n=96, seed=0, scenario="task", length=L):
    """Two-class tasks of random token ids; a task-specific cue token repeated at positions 1-4
    says the class (so a frozen random BERT's mean-pooled features separate them)."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for t in range(n_tasks):
        labels = torch.randint(0, 2, (n,), generator=generator)
        ids = torch.randint(20, 300, (n, length), generator=generator)
        ids[:, 1:5] = (1 + 2 * t + labels)[:, None]
        cut = n * 3 // 4
        shift = 0 if scenario == "domain" else 2 * t
        parts.append((f"text-{t}", ids[:cut], labels[:cut] + shift, ids[cut:], labels[cut:] + shift))
    return build_stream("toy-text", scenario, parts, (length,))


def ctr_on(stream, seed=0, model_seed=0, **params):
    model = make_model("transformer", stream.input_shape, stream.n_units, seed=model_seed, encoder="tiny")
    return make_method("ctr", model, seed=seed, **{"lr": 1e-2, **SMALL, **params})


def encoder_state(method):
    return {n: p.detach().clone() for n, p in method.model.encoder.own_parameters()}


# ----------------------------------------------------------------------------- the equations
def test_squash_matches_a_hand_computation():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([[25 / 26 * 3 / 5, 25 / 26 * 4 / 5], [0.0, 0.0], [0.5, 0.0]])
    assert torch.allclose(C.squash(x), expected, atol=1e-7)
    # along another dimension; lengths below 1 whatever the input's
    y = torch.randn(5, 3, 4)
    assert torch.allclose(C.squash(y, dim=1), C.squash(y.transpose(1, 2)).transpose(1, 2))
    assert (C.squash(100 * y).norm(dim=-1) < 1).all()


def test_pre_route_and_one_transfer_routing_pass_match_a_hand_computation():
    generator = torch.Generator().manual_seed(0)
    n, length, tasks, caps, dim = 2, 3, 3, 2, 2
    p = torch.randn(n, length, tasks, dim, generator=generator)
    routes = torch.randn(tasks, caps, dim, dim, generator=generator)
    u = C.pre_route(p, routes)
    similarity = torch.randn(n, tasks, caps, dim, generator=generator)
    gate = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    v = C.transfer_route(u, similarity, gate)
    assert u.shape == (n, length, tasks, caps, dim) and v.shape == (n, length, caps, dim)
    for a in range(n):
        for pos in range(length):
            for j in range(caps):
                total = torch.zeros(dim)
                for i in range(tasks):
                    u_ji = torch.tensor([sum(float(p[a, pos, i, k]) * float(routes[i, j, k, m])
                                             for k in range(dim)) for m in range(dim)])
                    assert torch.allclose(u[a, pos, i, j], u_ji, atol=1e-6)
                    total += float(gate[a, i]) * similarity[a, i, j] * u_ji
                assert torch.allclose(v[a, pos, j], total, atol=1e-6)
    # a closed gate removes a task's capsules entirely
    moved = u.clone()
    moved[0, :, 1] += 5.0
    assert torch.equal(C.transfer_route(moved, similarity, gate)[0], v[0])


def test_similarity_gate_is_hard_with_straight_through_gradients_and_argmax_at_test_time():
    logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [0.1, 0.0]], requires_grad=True)
    assert torch.equal(C.similarity_gate(logits), torch.tensor([1.0, 0.0, 1.0]))
    generator = torch.Generator().manual_seed(0)
    gate = C.similarity_gate(logits, generator)
    assert torch.allclose(gate, gate.round(), atol=1e-6) and set(gate.round().tolist()) <= {0.0, 1.0}
    gate.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the noise comes from the generator alone
    again = C.similarity_gate(logits.detach(), torch.Generator().manual_seed(0))
    assert torch.equal(again, gate.detach())
    # over many draws the sample follows softmax(logits): P(delta = 1) = sigmoid(l0 - l1)
    many = C.similarity_gate(torch.tensor([[1.0, 0.0]]).expand(20000, 2), torch.Generator().manual_seed(1))
    assert float(many.mean()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.015)


def test_annealing_compensation_and_regulariser_against_hand_computations():
    assert C.annealed_s(0, 3, 400.0) == pytest.approx(1 / 400)
    assert C.annealed_s(1, 3, 400.0) == pytest.approx((1 / 400 + 400) / 2)
    assert C.annealed_s(2, 3, 400.0) == 400.0 and C.annealed_s(0, 1, 400.0) == 400.0
    e = torch.tensor([0.5, -1.0, 2.0])
    factor = C.compensation(e, 2.0, 400.0)
    hand = [400 / 2 * (math.cosh(min(2 * v, 50)) + 1) / (math.cosh(v) + 1) for v in e.tolist()]
    assert torch.allclose(factor, torch.tensor(hand))
    # the clamp at 50 keeps cosh finite
    assert torch.isfinite(C.compensation(torch.tensor([5.0]), 400.0, 400.0)).all()

    method = ctr_on(text_stream())
    g = [(torch.tensor([0.2, 0.8]), torch.tensor([1.0])), (torch.tensor([0.5]), torch.tensor([0.0, 0.3]))]
    assert float(method.sparsity(g)) == pytest.approx((0.2 + 0.8 + 1.0 + 0.5 + 0.0 + 0.3) / 6)
    method.cumulative = [(torch.tensor([1.0, 0.0]), torch.tensor([0.5])),
                         (torch.tensor([0.0]), torch.tensor([1.0, 0.25]))]
    free = [0.0, 1.0, 0.5, 1.0, 0.0, 0.75]
    used = [0.2, 0.8, 1.0, 0.5, 0.0, 0.3]
    hand = sum(a * b for a, b in zip(used, free, strict=True)) / sum(free)
    assert float(method.sparsity(g)) == pytest.approx(hand)


def reference_ksm(plugin, h, t):
    """The KSM of one plugin for task ``t`` written out token by token (test-time gates)."""
    n, length, _ = h.shape
    caps, dim = plugin.n_caps, plugin.cap_dim
    out, deltas = torch.zeros(n, length, plugin.width), []

    def conv(layer, x, pad):  # x [channels, length] -> [out channels, positions]
        k = layer.kernel_size[0]
        padded = F.pad(x, (pad, pad))
        return torch.stack([(layer.weight * padded[:, o:o + k]).sum((1, 2)) + layer.bias
                            for o in range(padded.shape[1] - k + 1)], 1)

    for a in range(n):
        u = {}
        for pos in range(length):
            for i in range(t + 1):
                s = plugin.capsules[i].weight @ h[a, pos] + plugin.capsules[i].bias
                squared = (s * s).sum()
                capsule = squared / (1 + squared) * s / squared.sqrt()
                for j in range(caps):
                    u[pos, i, j] = capsule @ plugin.routes[i][j]

        def sequence(i, u=u):  # channel j * dim + k at every position
            return torch.stack([torch.cat([u[pos, i, j] for j in range(caps)]) for pos in range(length)], 1)

        q = torch.cat([conv(c, sequence(t), c.kernel_size[0] - 2).relu().amax(1)
                       for c in plugin.convs_current])
        mix = plugin.fc_current.weight @ q + plugin.fc_current.bias
        v = torch.zeros(length, caps, dim)
        for i in range(t + 1):
            z = torch.cat([(conv(c, sequence(i), 0) + mix[:, None]).relu().amax(1)
                           for c in plugin.convs_task])
            similarity = (plugin.fc_similarity.weight @ z + plugin.fc_similarity.bias).view(caps, dim)
            logits = plugin.fc_gate.weight @ z + plugin.fc_gate.bias
            delta = 1.0 if logits[0] >= logits[1] else 0.0
            deltas.append(delta)
            for pos in range(length):
                for j in range(caps):
                    v[pos, j] += delta * similarity[j] * u[pos, i, j]
        out[a] = v.view(length, caps * dim) @ plugin.larger.weight.T + plugin.larger.bias
    return out, deltas


def test_plugin_knowledge_sharing_and_task_module_match_a_hand_computation():
    control = C.Control(7.0, torch.Generator().manual_seed(0))
    plugin = C.CTRPlugin(width=4, adapter_size=3, cap_dim=2, n_caps=2, control=control, seed=1)
    plugin.grow(2)
    plugin.eval()
    h = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # centre the gate's logits so that some tasks transfer and some do not
        logits = plugin.similarity(plugin.pre_route_vectors(h, 1), 1)[1]
        plugin.fc_gate.bias[0] += float((logits[..., 1] - logits[..., 0]).median())
        for t in (0, 1):
            expected, deltas = reference_ksm(plugin, h, t)
            assert torch.allclose(plugin.knowledge_sharing(h, t, None), expected, atol=1e-5)
            g1, g2 = torch.sigmoid(7.0 * plugin.efc1[t]), torch.sigmoid(7.0 * plugin.efc2[t])
            hidden = torch.relu((h + expected) @ plugin.fc1.weight.T + plugin.fc1.bias) * g1
            out = h + torch.relu(hidden @ plugin.fc2.weight.T + plugin.fc2.bias) * g2
            assert torch.allclose(plugin(h, t), out, atol=1e-5)
        assert 1.0 in deltas and 0.0 in deltas  # open and closed gates are both exercised
    # task 1's capsule, routes and embeddings never enter task 0's output
    with torch.no_grad():
        before = plugin(h, 0)
        for p in plugin.task_parameters(1):
            p.add_(1.0)
        assert torch.equal(plugin(h, 0), before)


def test_initialisation_follows_the_code():
    control = C.Control(1.0, torch.Generator().manual_seed(0))
    plugin = C.CTRPlugin(width=64, adapter_size=200, cap_dim=3, n_caps=3, control=control, seed=0)
    plugin.grow(3)
    plugin.requires_grad_(False)
    assert 0.017 < float(plugin.fc1.weight.std()) < 0.023 and float(plugin.fc1.bias.abs().max()) == 0.0
    assert 0.01 < float(torch.cat(list(plugin.efc1)).std()) < 0.03  # BERT's normal(0, 0.02)
    assert 0.8 < float(torch.cat([r.flatten() for r in plugin.routes]).std()) < 1.2  # randn
    bound = 1 / math.sqrt(9 * 3)
    assert float(plugin.convs_task[0].weight.abs().max()) <= bound  # PyTorch's default conv init
    # per-task parts depend on (seed, task) only, not on when they are grown
    other = C.CTRPlugin(width=64, adapter_size=200, cap_dim=3, n_caps=3, control=control, seed=0)
    other.grow(1)
    other.grow(3)
    pairs = zip(plugin.state_dict().values(), other.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


# ----------------------------------------------------------------------------- the method
def test_plugins_go_after_both_projections_and_only_plugins_and_head_train():
    stream = text_stream()
    method = ctr_on(stream)
    before = encoder_state(method)
    head = method.model.head.weight.detach().clone()
    result = engine.run(method, stream, epochs=1, batch_size=8)
    slots = method.slots
    assert [(s.layer, s.kind) for s in slots] == [(0, "attention"), (0, "ffn"), (1, "attention"), (1, "ffn")]
    assert all(isinstance(s.plugin, C.CTRPlugin) and s.plugin.n_tasks == 2 for s in slots)
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert all(".plugin." in n or n.startswith("head.") for n in trainable)
    assert all(torch.equal(p, before[n]) for n, p in method.model.encoder.own_parameters())
    assert not torch.equal(method.model.head.weight, head)
    assert all(math.isfinite(loss) for loss in result.train_loss)


def test_s_is_annealed_within_every_epoch_and_smax_is_used_to_predict():
    stream = text_stream(n_tasks=1, n=32)  # 24 training examples: 3 batches of 8
    method = ctr_on(stream, smax=50.0)
    seen = []
    observe = method.observe

    def spy(x, y, t):
        loss = observe(x, y, t)
        seen.append(method.control.s)
        return loss

    method.observe = spy
    engine.run(method, stream, epochs=2, batch_size=8)
    assert seen == pytest.approx([1 / 50, (1 / 50 + 50) / 2, 50] * 2)
    method.predict(stream[0].x_test[:2], 0)
    assert method.control.s == 50.0


def test_units_fully_used_by_task_0_do_not_move_while_task_1_trains():
    stream = text_stream()
    method = ctr_on(stream, c=0.0, weight_decay=0.1)  # decay too: it must spare protected weights
    engine.run(method, stream.first(1), epochs=2, batch_size=8)
    plugins, cumulative = method.plugins, method.cumulative
    full = [(c1 == 1.0, c2 == 1.0) for c1, c2 in cumulative]
    assert sum(int(a.sum()) for a, _ in full) > 0 and sum(int(b.sum()) for _, b in full) > 0
    assert sum(int((c1 < 0.5).sum()) for c1, _ in cumulative) > 0  # and some units are still free
    before = [{n: p.detach().clone() for n, p in plugin.named_parameters()} for plugin in plugins]
    head = method.model.head.weight.detach().clone()
    method.set_training(True)
    method.begin_task(stream[1])
    method.begin_epoch(0, 9)
    for x, y in zip(stream[1].x_train.split(8), stream[1].y_train.split(8), strict=True):
        method.observe(x, y, 1)
    moved_free = 0
    for plugin, old, (used1, used2) in zip(plugins, before, full, strict=True):
        assert torch.equal(plugin.fc1.weight[used1], old["fc1.weight"][used1])
        assert torch.equal(plugin.fc1.bias[used1], old["fc1.bias"][used1])
        both = used2[:, None] & used1[None, :]
        assert torch.equal(plugin.fc2.weight[both], old["fc2.weight"][both])
        assert torch.equal(plugin.fc2.bias[used2], old["fc2.bias"][used2])
        assert torch.equal(plugin.efc1[0], old["efc1.0"]) and torch.equal(plugin.efc2[0], old["efc2.0"])
        moved_free += int((plugin.fc1.weight[~used1] != old["fc1.weight"][~used1]).any())
    assert moved_free > 0  # the rest of the task module does learn
    units0 = list(stream.layout.task_units[0])
    assert torch.equal(method.model.head.weight[units0], head[units0])
    assert not torch.equal(method.model.head.weight, head)


def test_task_0_predictions_depend_only_on_task_0_and_shared_parameters():
    """What CTR guarantees an old task: a later task's own parameters (capsule, routes, masks, head
    units) never enter its output. The shared KSM keeps learning (as the code), so training task 1
    may change task 0's output through it: that is the transfer the paper wants, not guaranteed."""
    stream = text_stream()
    method = ctr_on(stream)
    engine.run(method, stream, epochs=1, batch_size=8)
    x = stream[0].x_test
    units0 = list(stream.layout.task_units[0])
    units1 = list(stream.layout.task_units[1])
    reference = method.predict(x, 0)[:, units0]
    with torch.no_grad():
        for plugin in method.plugins:
            for p in plugin.task_parameters(1):
                p.add_(torch.randn_like(p))
        method.model.head.weight[units1] += 1.0
    assert torch.equal(method.predict(x, 0)[:, units0], reference)
    # while task 1's output does depend on them
    assert not torch.equal(method.predict(x, 1)[:, units0], reference)


def test_a_two_task_text_stream_is_learned():
    stream = text_stream()
    result = engine.run(ctr_on(stream), stream, epochs=3, batch_size=8)
    assert result.accuracy_matrix[0, 0] >= 0.9 and result.accuracy_matrix[1, 1] >= 0.9
    assert result.accuracy_matrix[1, 0] >= 0.9  # and task 0 is still known after task 1
    assert result.train_loss[0] < math.log(2)


def test_domain_scenario_shares_one_head():
    stream = text_stream(scenario="domain")
    assert stream.n_units == 2
    method = ctr_on(stream)
    result = engine.run(method, stream, epochs=2, batch_size=8)
    assert method.train_mask is None  # every task trains the whole (shared) head
    assert result.accuracy_matrix[0, 0] >= 0.9 and result.accuracy_matrix[1, 1] >= 0.9


def test_memory_and_report():
    stream = text_stream()
    method = ctr_on(stream, adapter_size=16, cap_dim=3, n_caps=3)
    result = engine.run(method, stream, epochs=1, batch_size=8)
    d, a, routed, pooled = 32, 16, 9, 300
    shared = (sum(routed * 100 * k + 100 for k in (3, 4, 5)) * 2 + (pooled * 100 + 100)
              + (pooled * routed + routed) + (pooled * 2 + 2) + (routed * d + d) + (d * a + a) + (a * d + d))
    per_task = (d * 3 + 3) + 3 * 3 * 3 + a + d
    memory = result.method_memory[-1]
    assert memory["plugin_parameters"] == 4 * (shared + 2 * per_task)
    assert memory["plugin_bytes"] == 4 * memory["plugin_parameters"]
    assert memory["mask_values"] == 4 * (a + d) and memory["embedding_values"] == 4 * 2 * (a + d)
    assert memory["trained_parameters"] == memory["plugin_parameters"] + d * 4 + 4
    report = result.method_reports[-1]
    assert set(report["capacity"]) == {"layer0.attention", "layer0.ffn", "layer1.attention", "layer1.ffn"}
    used = sum(int((g > 0.5).sum()) for pair in method.cumulative for g in pair)
    assert report["capacity_total"] == pytest.approx(used / (4 * (a + d)))
    assert result.method_reports[0]["capacity_total"] <= report["capacity_total"]


def test_resume_from_a_checkpoint_is_bit_identical():
    """tests/test_engine.py's resume check, on the tiny BERT (CTR needs a transformer)."""
    stream = text_stream()

    def build(seed=3):
        model = make_model("transformer", stream.input_shape, stream.n_units, seed=seed, encoder="tiny")
        return make_method("ctr", model, seed=3, lr=0.1, **SMALL)

    whole = engine.run(build(), stream, epochs=2, batch_size=8, seed=3)
    seeds = iter([3, 99])  # the fresh method's network is drawn from another seed
    resumed = resumed_after_first_task(lambda: build(next(seeds)), stream, epochs=2, batch_size=8, seed=3)
    np.testing.assert_array_equal(resumed.accuracy_matrix, whole.accuracy_matrix)
    assert resumed.train_loss == whole.train_loss


def test_a_validation_schedule_ends_each_task_on_its_best_epoch(monkeypatch):
    """tests/test_schedule.py's check, on the tiny BERT: the restored weights (plugins, masks' embeddings,
    head) score the lowest validation loss the schedule saw."""
    schedule = ValidationSchedule(valid_fraction=0.25, lr_patience=2, lr_factor=2.0, lr_min=1e-3)
    seen: list[float] = []
    real = engine.validation_loss

    def recording(method, task, x, y):
        seen.append(real(method, task, x, y))
        return seen[-1]

    monkeypatch.setattr(engine, "validation_loss", recording)
    stream = text_stream().first(1)
    method = ctr_on(stream, lr=0.05, seed=3)
    at_end = {}
    monkeypatch.setattr(method, "end_task", lambda task: at_end.setdefault(
        "loss", real(method, task, *schedule.split(stream[0], seed=3)[1:])))
    result = engine.run(method, stream, epochs=6, batch_size=8, seed=3, schedule=schedule)
    assert result.epochs_run == [len(seen)] and len(seen) >= 2
    assert at_end["loss"] == pytest.approx(min(seen), rel=1e-6, abs=1e-7)


def test_bad_settings_are_rejected():
    stream = text_stream()
    model = make_model("transformer", stream.input_shape, stream.n_units, encoder="tiny")
    with pytest.raises(ValueError, match="smax"):
        make_method("ctr", model, smax=0.5)
    for bad in ({"adapter_size": 0}, {"cap_dim": 0}, {"lr": 0.0}, {"c": -1.0}, {"max_grad_norm": 0.0}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            make_method("ctr", model, **bad)
    mlp = make_model("mlp", (1, 4, 4), 4, hidden=(8,))
    toy = build_stream("toy", "task", [("a", torch.randn(8, 1, 4, 4), torch.randint(0, 2, (8,)),
                                        torch.randn(4, 1, 4, 4), torch.randint(0, 2, (4,)))], (1, 4, 4))
    with pytest.raises(ValueError, match="transformer"):
        make_method("ctr", mlp).begin_task(toy[0])
    unfrozen = make_model("transformer", (L,), stream.n_units, encoder="tiny", freeze=False)
    with pytest.raises(ValueError, match="frozen"):
        make_method("ctr", unfrozen).begin_task(stream[0])
    deeper = make_model("transformer", (L,), stream.n_units, encoder="tiny", hidden=(8,))
    with pytest.raises(ValueError, match="hidden"):
        make_method("ctr", deeper).begin_task(stream[0])
    short = text_stream(length=4)
    with pytest.raises(ValueError, match="L >= 5"):
        make_method("ctr", make_model("transformer", (4,), 4, encoder="tiny")).begin_task(short[0])
    method = make_method("ctr", make_model("transformer", (L,), stream.n_units, encoder="tiny"), **SMALL)
    classes = build_stream("toy-text", "class", [(t.name, t.x_train, t.y_train, t.x_test, t.y_test)
                                                 for t in stream], (L,))
    with pytest.raises(ValueError, match="class-incremental"):
        method.begin_task(classes[0])
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(method, classes)
    with pytest.raises(ValueError, match="task id"):
        method.predict(stream[0].x_test, None)
    with pytest.raises(ValueError, match="one task at a time"):
        method.predict(stream[0].x_test, torch.zeros(len(stream[0].x_test), dtype=torch.long))
