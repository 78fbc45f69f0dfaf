"""HAT over Adapter-BERT (``adapter-hat``) on the tiny random BERT."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import resumed_after_first_task
from test_method_adapter import adapter, text_stream, tiny, train_task

from lifelong import engine
from lifelong.benchmarks.stream import mask_logits
from lifelong.methods import make_method
from lifelong.methods.adapter_hat import MaskedAdapter, annealed_s, compensate_, sparsity
from lifelong.params import ParamError

torch.set_num_threads(1)


def hat(stream, **params):
    return adapter("adapter-hat", stream, **params)


# ----------------------------------------------------------------------------- the equations
def test_regulariser_against_a_hand_computation():
    gates = [torch.tensor([0.2, 0.9, 0.5]), torch.tensor([1.0, 0.0])]
    # first task: the mean attention over all 5 units
    assert float(sparsity(gates, None)) == pytest.approx((0.2 + 0.9 + 0.5 + 1.0 + 0.0) / 5)
    cumulative = [torch.tensor([1.0, 0.0, 0.25]), torch.tensor([0.5, 0.5])]
    # sum a (1 - a_prev) / sum (1 - a_prev)
    numerator = 0.2 * 0 + 0.9 * 1 + 0.5 * 0.75 + 1.0 * 0.5 + 0.0 * 0.5
    assert float(sparsity(gates, cumulative)) == pytest.approx(numerator / (0 + 1 + 0.75 + 0.5 + 0.5))


def test_annealing_and_compensation_follow_hat():
    assert annealed_s(0, 5, 400.0) == pytest.approx(1 / 400)
    assert annealed_s(4, 5, 400.0) == pytest.approx(400.0)
    assert annealed_s(2, 5, 400.0) == pytest.approx(1 / 400 + (400 - 1 / 400) / 2)
    e = torch.tensor([0.3, -2.0, 0.0], requires_grad=True)
    e.grad = torch.tensor([1.0, 2.0, -1.0])
    compensate_([e], s=10.0, smax=400.0, thres_cosh=50.0)
    expected = [g * 400 / 10 * (math.cosh(min(max(10 * v, -50), 50)) + 1) / (math.cosh(v) + 1)
                for v, g in zip([0.3, -2.0, 0.0], [1.0, 2.0, -1.0], strict=True)]
    assert e.grad.tolist() == pytest.approx(expected, rel=1e-5)


def test_masked_adapter_gates_its_bottleneck_and_its_output():
    generator = torch.Generator().manual_seed(0)
    module = MaskedAdapter(4, 3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    h = torch.randn(2, 5, 4, generator=generator)
    down, up = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 1.0, 1.0, 0.25])
    module.gates = (down, up)
    inner = torch.relu(h @ module.down.weight.T + module.down.bias) * down
    assert torch.allclose(module(h), h + up * (inner @ module.up.weight.T + module.up.bias), atol=1e-6)
    module.gates = None
    with pytest.raises(RuntimeError, match="gates"):
        module(h)


def test_gradient_views_follow_the_code():
    stream = text_stream()
    method = hat(stream, adapter_size=3)
    slots = method.setup()
    masks = []
    for slot in slots:
        masks += [torch.rand(3), torch.rand(slot.plugin.up.out_features)]
    views = method.parameter_views(masks)
    assert len(views) == 4 * len(slots)
    first = slots[0].plugin
    (dw, dw_mask), (db, db_mask), (uw, uw_mask), (ub, ub_mask) = views[:4]
    assert dw is first.down.weight and uw is first.up.weight and db is first.down.bias and ub is first.up.bias
    down, up = masks[0], masks[1]
    for i in range(3):  # the hidden state feeding the adapter is not gated: rows only
        assert torch.equal(dw_mask[i], torch.full((32,), float(down[i])))
    assert torch.equal(uw_mask[5, 2], torch.minimum(up[5], down[2]))
    assert torch.equal(db_mask, down) and torch.equal(ub_mask, up)


def test_observe_is_cross_entropy_plus_c_times_the_regulariser_at_the_annealed_s():
    stream = text_stream()
    method = hat(stream, c=0.5)
    method.set_training(True)
    method.begin_task(stream[0])
    method.begin_epoch(0, 4)
    x, y = stream[0].x_train[:8], stream[0].y_train[:8]
    gates = [torch.sigmoid(e.detach() / 400) for e in method.embedding(0)]  # s = 1/smax
    method.set_gates(gates)
    with torch.no_grad():
        cross_entropy = F.cross_entropy(mask_logits(method.model(x, 0), stream[0].train_mask), y)
    mean_gate = float(sum(g.sum() for g in gates) / sum(g.numel() for g in gates))
    assert float(method.observe(x, y, 0)) == pytest.approx(float(cross_entropy) + 0.5 * mean_gate, rel=1e-5)
    assert method.s == pytest.approx(1 / 400)
    method.observe(x, y, 0)
    assert method.s == pytest.approx(1 / 400 + (400 - 1 / 400) / 3)


# ----------------------------------------------------------------------------- protection
def _binary_end(method, task):
    """Train ``task``, then saturate its embeddings to ±thres_emb (all gates exactly 0 or 1)."""
    method.set_training(True)
    method.begin_task(task)
    method.begin_epoch(0, 6)
    for x, y in zip(task.x_train.split(8), task.y_train.split(8), strict=True):
        method.observe(x, y, task.id)
    with torch.no_grad():
        for e in method.embedding(task.id):
            e.copy_(torch.where(e > 0, 6.0, -6.0))
    method.end_task(task)
    method.set_training(False)


def test_fully_masked_weights_do_not_move_and_task_0_predictions_are_bit_identical():
    stream = text_stream()
    method = hat(stream, train_layernorm=False)
    _binary_end(method, stream[0])
    assert all(set(torch.unique(a).tolist()) <= {0.0, 1.0} for a in method.cumulative)
    x0 = stream[0].x_test
    first = method.predict(x0, 0).clone()
    views = method.parameter_views(method.cumulative)
    blocked = [(p, view == 1.0, p.detach().clone()) for p, view in views]
    assert sum(int(m.sum()) for _, m, _ in blocked) > 0
    train_task(method, stream[1], epochs=2)
    for p, used, before in blocked:
        assert torch.equal(p[used], before[used])  # used by task 0: frozen
    assert any(not torch.equal(p[~used], before[~used]) for p, used, before in blocked)  # free: trains
    units = list(stream.layout.task_units[0])
    assert torch.equal(method.predict(x0, 0)[:, units], first[:, units])  # task 0's own head units


def test_with_graded_masks_only_the_saturated_weights_are_frozen():
    stream = text_stream()
    method = hat(stream, train_layernorm=False)
    train_task(method, stream[0], epochs=2)
    views = method.parameter_views(method.cumulative)
    blocked = [(p, view == 1.0, p.detach().clone()) for p, view in views]
    assert sum(int(m.sum()) for _, m, _ in blocked) > 0
    train_task(method, stream[1], epochs=2)
    assert all(torch.equal(p[used], before[used]) for p, used, before in blocked)


def test_the_codes_shared_layernorms_let_old_predictions_drift():
    """train_layernorm=True (the code's default) trains unmasked LayerNorms: task 0 changes."""
    stream = text_stream()
    method = hat(stream)
    _binary_end(method, stream[0])
    x0 = stream[0].x_test
    first = method.predict(x0, 0).clone()
    train_task(method, stream[1], epochs=2)
    units = list(stream.layout.task_units[0])
    assert not torch.allclose(method.predict(x0, 0)[:, units], first[:, units], atol=1e-5)


def test_a_two_task_text_stream_is_learned_and_capacity_is_reported():
    stream = text_stream()
    method = hat(stream)
    result = engine.run(method, stream, epochs=8, batch_size=8)
    R = result.accuracy_matrix
    assert R[0, 0] >= 0.9 and R[1, 1] >= 0.9 and R[1, 0] >= 0.9
    report = result.method_reports[-1]
    in_use = [a > 0.5 for a in method.cumulative]
    assert set(report["capacity"]) == {"layer0", "layer1"}
    layer0 = torch.cat(in_use[:4]).float().mean()
    assert report["capacity"]["layer0"] == pytest.approx(float(layer0))
    assert 0 < report["weight_capacity"] < 1
    memory = result.method_memory[-1]
    assert memory["embedding_values"] == 2 * 4 * (32 + 32) and memory["mask_bytes"] == 4 * 4 * (32 + 32)


def test_domain_scenario_selects_the_masks_by_task_id():
    stream = text_stream(scenario="domain")
    result = engine.run(hat(stream), stream, epochs=8, batch_size=8)
    assert stream.n_units == 2 and result.accuracy_matrix[1, 1] >= 0.9


# ----------------------------------------------------------------------------- checkpoints
def test_resume_from_saved_state_matches_uninterrupted_run():
    stream = text_stream(n_tasks=3, n=32)
    full = engine.run(hat(stream, seed=3), stream, epochs=2, batch_size=8, seed=3)
    seeds = iter([0, 9])
    resumed = resumed_after_first_task(lambda: hat(stream, seed=3, model_seed=next(seeds)),
                                       stream, epochs=2, batch_size=8, seed=3)
    np.testing.assert_array_equal(resumed.accuracy_matrix, full.accuracy_matrix)
    assert resumed.train_loss == full.train_loss


# ----------------------------------------------------------------------------- bad input
def test_bad_parameters_and_models_are_rejected():
    stream = text_stream()
    model = tiny(stream)
    for bad in ({"c": -1.0}, {"smax": 0.0}, {"thres_emb": 0.0}, {"clipgrad": -1.0}, {"adapter_size": 0}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            make_method("adapter-hat", model, **bad)
    with pytest.raises(ValueError, match="smax=0.5"):
        make_method("adapter-hat", model, smax=0.5)
    on_top = make_method("adapter-hat", tiny(stream, hidden=(8,)))
    with pytest.raises(ValueError, match="hidden=\\(\\)"):
        on_top.begin_task(stream[0])
    method = hat(stream)
    with pytest.raises(ValueError, match="task id"):
        method.predict(stream[0].x_test, None)
    classes = text_stream(scenario="class")
    with pytest.raises(ValueError, match="needs the task id"):
        engine.run(hat(classes), classes)
