"""A-GEM: the projection, the per-class ring memory, reference batches, masks and forgetting."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import make_method
from lifelong.methods.agem import AGEM, project_away
from lifelong.models import make_model


def _agem(stream, seed=0, **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=(16,))
    return make_method("agem", model, seed=seed, **params)


def _train(method, stream, tasks, batch_size=8):
    for t in tasks:
        task = stream[t]
        method.begin_task(task)
        for x, y in zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True):
            method.observe(x, y, t)
        method.end_task(task)


def test_projection_closed_form_on_a_hand_case():
    g, reference = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g.r = -1, r.r = 2
    projected = project_away(g, reference)
    np.testing.assert_allclose(projected.numpy(), [0.5, 0.5])
    assert float(projected @ reference) == pytest.approx(0.0)
    agreeing = torch.tensor([0.0, 3.0])  # g.r = 3 >= 0: untouched (the very tensor)
    assert project_away(agreeing, reference) is agreeing
    orthogonal = torch.tensor([1.0, 1.0])  # g.r = 0: untouched, as the official ``dotp >= 0`` test
    assert project_away(orthogonal, reference) is orthogonal


def _official_ring(labels_per_batch, task_units_per_task, m, n_units):
    """The official per-example loop: slot m*index(c) + count[c], count[c] = (count[c] + 1) % m."""
    count = [0] * n_units
    memories = []
    for units, batches in zip(task_units_per_task, labels_per_batch, strict=True):
        slots = [None] * (m * len(units))
        for batch in batches:
            for example, c in batch:
                slots[m * units.index(c) + count[c]] = example
                count[c] = (count[c] + 1) % m
        memories.append(slots)
    return memories


def test_ring_per_class_matches_the_official_loop():
    generator = torch.Generator().manual_seed(0)
    m, sizes = 3, [1, 4, 9, 2, 5, 7, 3, 8]  # batches up to 3x the ring of a class
    parts, batches = [], []
    offset = 0
    for t in range(2):
        n = sum(sizes)
        labels = torch.randint(0, 2, (n,), generator=generator) + 2 * t
        x = torch.arange(offset, offset + n, dtype=torch.float32).reshape(n, 1, 1, 1)
        offset += n
        parts.append((f"t{t}", x, labels, x[:2], labels[:2]))
        chunks = zip(x.split(sizes), labels.split(sizes), strict=True)
        batches.append([list(zip(xb.flatten().tolist(), yb.tolist(), strict=True)) for xb, yb in chunks])
    stream = build_stream("ring", "task", parts, (1, 1, 1))
    method = AGEM(make_model("mlp", (1, 1, 1), stream.n_units, hidden=(2,)), memories_per_class=m)
    for t in range(2):
        method.begin_task(stream[t])
        for xb, yb in zip(stream[t].x_train.split(sizes), stream[t].y_train.split(sizes), strict=True):
            method.remember(xb, yb, t)
    expected = _official_ring(batches, [list(u) for u in stream.layout.task_units], m, stream.n_units)
    for t in range(2):
        assert method.written[t].all()
        assert method.memory_x[t].flatten().tolist() == expected[t]
        # labels follow their examples: slot block i holds class units[i]
        units = stream.layout.task_units[t]
        assert method.memory_y[t].tolist() == [u for u in units for _ in range(m)]


def test_reference_batch_is_all_memory_while_small_then_a_seeded_subset():
    stream = build_stream("toy", "task", toy_parts(n_tasks=3), (1, 4, 4))
    method = _agem(stream, memories_per_class=5, reference_batch_size=12)
    _train(method, stream, range(1))
    method.begin_task(stream[1])
    x, y, mask = method.reference_batch()  # 10 memories <= 12: all of them, in slot order
    assert torch.equal(x, method.memory_x[0]) and torch.equal(y, method.memory_y[0])
    assert torch.equal(mask, stream.layout.train_mask(0).expand(10, -1))
    _train(method, stream, [1])
    method.begin_task(stream[2])  # 20 memories > 12: 12 distinct ones, from the seeded generator
    state = method.generator.get_state()
    x, y, mask = method.reference_batch()
    assert len(y) == 12
    assert len({tuple(row.tolist()) for row in x.flatten(1)}) == 12
    task_of = torch.tensor([0 if u in stream.layout.task_units[0] else 1 for u in y.tolist()])
    for t in (0, 1):
        rows = task_of == t
        assert torch.equal(mask[rows], stream.layout.train_mask(t).expand(int(rows.sum()), -1))
    method.generator.set_state(state)
    again = method.reference_batch()
    assert torch.equal(again[0], x) and not torch.equal(method.reference_batch()[0], x)


def test_reference_gradient_scores_each_memory_over_its_own_task_units():
    stream = build_stream("toy", "task", toy_parts(n_tasks=3), (1, 4, 4))
    method = _agem(stream, memories_per_class=4)
    _train(method, stream, range(2))
    method.begin_task(stream[2])  # 16 memories <= 256: the whole memory, one loss over it
    losses = []
    for t in (0, 1):
        units = list(stream.layout.task_units[t])
        logits = method.model(method.memory_x[t])[:, units]  # the official split code's view
        losses.append(F.cross_entropy(logits, method.memory_y[t] - units[0], reduction="sum"))
    expected = torch.autograd.grad(sum(losses) / 16, list(method.model.parameters()))
    expected = torch.cat([g.reshape(-1) for g in expected])
    np.testing.assert_allclose(method.reference_gradient().numpy(), expected.numpy(), atol=1e-6)


def test_projected_step_does_not_increase_the_reference_loss_to_first_order():
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    method = _agem(stream, lr=0.1)
    _train(method, stream, [0])
    method.begin_task(stream[1])
    reference = method.reference_gradient()
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]
    method.optimizer.zero_grad()
    method.loss(method.model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in method.model.parameters()])
    assert float(g @ reference) < -1e-3  # the conflicting task's gradient violates the constraint
    projected = project_away(g, reference)
    assert abs(float(projected @ reference)) < 1e-6
    np.testing.assert_allclose(float(projected @ projected),
                               float(g @ g) - float(g @ reference) ** 2 / float(reference @ reference),
                               rtol=1e-5)


def test_memory_counts_and_bytes(toy_task_stream):
    result = engine.run(_agem(toy_task_stream), toy_task_stream, batch_size=8)
    # 2 classes per task, 25 memories each (every class has more than 25 examples)
    assert [m["stored_examples"] for m in result.method_memory] == [50, 100, 150]
    assert result.method_memory[-1]["stored_bytes"] == 150 * (16 * 4 + 8)


def test_agem_forgets_conflicting_tasks_much_less_than_finetune():
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    runs = {}
    for name in ("finetune", "agem"):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
        runs[name] = engine.run(make_method(name, model, lr=0.1), stream, epochs=6, batch_size=8)
    assert runs["finetune"].accuracy_matrix[0, 0] > 0.9 and runs["agem"].accuracy_matrix[0, 0] > 0.9
    assert runs["finetune"].metrics["bwt"] < -0.7
    assert runs["agem"].metrics["bwt"] > -0.05
    assert runs["agem"].accuracy_matrix[1, 0] > 0.9


def test_agem_learns_compatible_tasks(toy_task_stream):
    result = engine.run(_agem(toy_task_stream), toy_task_stream, epochs=2, batch_size=8)
    assert result.metrics["acc"] > 0.9 and result.metrics["bwt"] > -0.05


def test_same_seed_same_run_other_seed_other_batches_and_state_round_trip(toy_task_stream):
    def run(seed):
        method = _agem(toy_task_stream, seed=seed, memories_per_class=10, reference_batch_size=8)
        return engine.run(method, toy_task_stream, batch_size=8, seed=0), method

    first, _ = run(1)
    second, method = run(1)
    other, _ = run(2)  # only the method's seed differs: initial weights and reference batches
    assert first.train_loss == second.train_loss and first.train_loss != other.train_loss
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = _agem(toy_task_stream, seed=7, memories_per_class=10, reference_batch_size=8)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    assert torch.equal(fresh.class_count, method.class_count)
    assert torch.equal(fresh.generator.get_state(), method.generator.get_state())
    for t in range(3):
        assert torch.equal(fresh.memory_x[t], method.memory_x[t])
        assert torch.equal(fresh.written[t], method.written[t])
    assert fresh.memory() == method.memory()


def test_defaults_are_the_official_mnist_settings():
    method = AGEM(make_model("mlp", (1, 4, 4), 2))
    assert (method.lr, method.memories_per_class, method.reference_batch_size) == (0.1, 25, 256)
