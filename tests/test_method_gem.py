"""GEM: the dual QP, the projection, the batched past-task gradients, the memory and forgetting."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import make_method
from lifelong.methods.gem import GEM, project_to_cone, solve_dual
from lifelong.models import make_model


def _gem(stream, seed=0, hidden=(16,), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    return make_method("gem", model, seed=seed, **params)


def _train(method, stream, tasks, batch_size=8):
    """Feed ``tasks`` of ``stream`` to ``method`` one pass each, in order (no evaluation)."""
    for t in tasks:
        task = stream[t]
        method.begin_task(task)
        for x, y in zip(task.x_train.split(batch_size), task.y_train.split(batch_size), strict=True):
            method.observe(x, y, t)
        method.end_task(task)


# ----------------------------------------------------------------------------- the QP
def test_one_constraint_without_margin_is_the_closed_form_projection():
    g = torch.tensor([1.0, 2.0, -1.0])
    row = torch.tensor([[-1.0, 0.5, 2.0]])  # g . row = -1 + 1 - 2 = -2 < 0
    projected = project_to_cone(g, row, margin=0.0, eps=0.0)
    expected = g.double() - (-2.0 / 5.25) * row[0].double()
    np.testing.assert_allclose(projected.numpy(), expected.numpy(), atol=1e-12)
    assert float(projected @ row[0].double()) == pytest.approx(0.0, abs=1e-12)
    # a gradient that already agrees with the constraint is left unchanged (v* = 0)
    np.testing.assert_allclose(project_to_cone(-g, row, margin=0.0, eps=0.0).numpy(), -g.numpy())


def test_margin_is_a_lower_bound_on_the_dual_variables_as_in_project2cone2():
    g = torch.tensor([1.0, 0.0])
    row = torch.tensor([[0.0, 1.0]])  # orthogonal: without a margin nothing would change
    v = solve_dual(g, row, margin=0.5, eps=0.0)
    np.testing.assert_allclose(v.numpy(), [0.5])
    np.testing.assert_allclose(project_to_cone(g, row, margin=0.5, eps=0.0).numpy(), [1.0, 0.5])


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_several_constraints_satisfy_the_kkt_conditions(margin):
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 40, generator=generator)
    g = -rows[:3].sum(0) + 0.3 * torch.randn(40, generator=generator)  # conflicts with several rows
    assert (rows @ g < 0).sum() >= 2
    eps = 1e-3
    v = solve_dual(g, rows, margin, eps).numpy()
    G, g64 = rows.double().numpy(), g.double().numpy()
    gradient = (G @ G.T + eps * np.eye(5)) @ v + G @ g64  # of the dual objective
    assert np.all(v >= margin - 1e-9)  # primal feasibility
    assert np.all(gradient >= -1e-7)  # dual feasibility (multipliers of v >= margin)
    np.testing.assert_allclose((v - margin) * gradient, 0.0, atol=1e-7)  # complementary slackness
    assert np.any(v > margin + 1e-6)  # some constraint is active, the case is not trivial
    # the projected step agrees with every past gradient up to the eps regularisation: G g~ >= -eps v
    projected = project_to_cone(g, rows, margin, eps).numpy()
    np.testing.assert_allclose(projected, G.T @ v + g64)
    assert np.all(G @ projected >= -eps * v - 1e-7)


def test_dependent_constraints_need_eps():
    g = torch.tensor([-1.0, -2.0])
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # three gradients in a plane: GG' singular
    with pytest.raises(ValueError, match="use eps > 0"):
        solve_dual(g, rows, margin=0.0, eps=0.0)
    v = solve_dual(g, rows, margin=0.0, eps=1e-3)
    projected = project_to_cone(g, rows, margin=0.0, eps=1e-3)
    assert torch.all(v >= 0)
    assert torch.all(rows.double() @ projected >= -1e-3 * v - 1e-9)
    np.testing.assert_allclose(projected.numpy(), [0.0, 0.0], atol=1e-2)  # the cone's closest point


# ----------------------------------------------------------------------------- past gradients
def _loop_by_slicing(method, stream):
    """The official code's computation: per past task, CE over its own units' logits (sliced)."""
    rows = []
    params = [p for p in method.model.parameters()]
    for k in method.past:
        filled = method.written[k]
        x, y = method.memory_x[k][filled], method.memory_y[k][filled]
        units = list(stream.layout.task_units[k])
        lookup = torch.full((stream.n_units,), -1)
        lookup[units] = torch.arange(len(units))
        loss = F.cross_entropy(method.model(x)[:, units], lookup[y])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_batched_past_gradients_equal_the_per_task_loop(scenario):
    stream = build_stream("toy", scenario, toy_parts(n_tasks=4, disjoint=scenario != "domain", n=40),
                          (1, 4, 4))
    method = _gem(stream, n_memories=25)  # 30 examples per task: the ring wraps, slots differ per task
    _train(method, stream, range(3), batch_size=7)
    method.begin_task(stream[3])
    batched, loop = method.past_gradients_batched(), method.past_gradients_loop()
    assert batched.shape == (3, sum(p.numel() for p in method.model.parameters()))
    np.testing.assert_allclose(batched.numpy(), loop.numpy(), atol=1e-6, rtol=0)
    if scenario == "task":  # masks select each past task's own units, as the official offsets do
        np.testing.assert_allclose(batched.numpy(), _loop_by_slicing(method, stream).numpy(), atol=1e-6)


def test_partially_filled_memories_use_only_their_written_slots():
    stream = build_stream("toy", "task", toy_parts(n_tasks=3, n=40), (1, 4, 4))
    method = _gem(stream, n_memories=64)  # more slots than a task's 30 examples
    _train(method, stream, range(2), batch_size=8)
    method.begin_task(stream[2])
    assert [int(method.written[k].sum()) for k in (0, 1)] == [30, 30]
    expected = _loop_by_slicing(method, stream).numpy()
    np.testing.assert_allclose(method.past_gradients_batched().numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(method.past_gradients_loop().numpy(), expected, atol=1e-6)


def test_the_step_never_increases_a_past_memory_loss_to_first_order():
    stream = build_stream("flip", "domain", toy_parts(n_tasks=3, disjoint=False, flip=True), (1, 4, 4))
    method = _gem(stream, lr=0.1)
    _train(method, stream, range(2))
    method.begin_task(stream[2])
    x, y = stream[2].x_train[:8], stream[2].y_train[:8]
    past = method.past_gradients()
    method.optimizer.zero_grad()
    method.loss(method.model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in method.model.parameters()])
    projected = project_to_cone(g, past, method.memory_strength, method.eps).float()
    assert (past @ g < 0).any()  # the plain step would increase some past loss
    v = solve_dual(g, past, method.memory_strength, method.eps).float()
    assert torch.all(past @ projected >= -method.eps * v - 1e-5)

    def past_losses(direction, step=1e-3):
        with torch.no_grad():
            flat = torch.nn.utils.parameters_to_vector(method.model.parameters())
            torch.nn.utils.vector_to_parameters(flat - step * direction, method.model.parameters())
            losses = torch.stack([
                F.cross_entropy(method.model(method.memory_x[k][method.written[k]]).double(),
                                method.memory_y[k][method.written[k]]) for k in method.past])
            torch.nn.utils.vector_to_parameters(flat, method.model.parameters())
        return losses

    before = past_losses(torch.zeros_like(g))
    plain = past_losses(g) - before
    assert plain.max() > 5e-5  # plain SGD (step 1e-3): a past task gets clearly worse
    gem = past_losses(projected) - before
    # GEM's step: no past loss grows beyond the eps regularisation's first-order slack (1e-3 * eps * v)
    # plus a second-order term
    assert torch.all(gem <= 1e-3 * method.eps * v.double() + 5e-7)
    assert gem.max() < 0.02 * plain.max()


# ----------------------------------------------------------------------------- memory
def test_ring_buffer_is_the_official_one_counter_shared_by_all_tasks():
    x = torch.arange(24, dtype=torch.float32).reshape(24, 1, 1, 1)
    parts = [("a", x[:12], torch.zeros(12, dtype=torch.long), x[:2], torch.zeros(2, dtype=torch.long)),
             ("b", x[12:], torch.zeros(12, dtype=torch.long), x[:2], torch.zeros(2, dtype=torch.long))]
    stream = build_stream("ring", "domain", parts, (1, 1, 1))
    method = GEM(make_model("mlp", (1, 1, 1), 1, hidden=(2,)), n_memories=7)
    method.begin_task(stream[0])
    for batch in x[:12].split(3):  # slots 0-2, 3-5, 6 (rest dropped), then 0-2 again
        method.observe(batch, torch.zeros(len(batch), dtype=torch.long), 0)
    assert method.memory_x[0].flatten().tolist() == [9, 10, 11, 3, 4, 5, 6]
    assert method.ring == 3
    method.begin_task(stream[1])  # the counter is not reset: task 1 starts at slot 3
    method.observe(x[12:15], torch.zeros(3, dtype=torch.long), 1)
    assert method.memory_x[1].flatten().tolist() == [0, 0, 0, 12, 13, 14, 0]
    assert method.written[1].tolist() == [False, False, False, True, True, True, False]
    memory = method.memory()
    assert memory["stored_examples"] == 7 + 3
    assert memory["stored_bytes"] == 2 * 7 * (4 + 8)  # float32 inputs and int64 labels, 7 slots each


def test_memory_counts_and_bytes_after_a_run(toy_task_stream):
    result = engine.run(_gem(toy_task_stream, n_memories=32), toy_task_stream, batch_size=8)
    per_task = [m["stored_examples"] for m in result.method_memory]
    assert per_task == [32, 64, 96]
    assert result.method_memory[-1]["stored_bytes"] == 3 * 32 * (16 * 4 + 8)
    assert result.method_memory[-1]["parameters"] == 16 * 16 + 16 + 16 * 6 + 6


# ----------------------------------------------------------------------------- behaviour
def test_gem_forgets_conflicting_tasks_much_less_than_finetune():
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    runs = {}
    for name in ("finetune", "gem"):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
        runs[name] = engine.run(make_method(name, model, lr=0.1), stream, epochs=6, batch_size=8)
    assert runs["finetune"].accuracy_matrix[0, 0] > 0.9 and runs["gem"].accuracy_matrix[0, 0] > 0.9
    assert runs["finetune"].metrics["bwt"] < -0.7
    assert runs["gem"].metrics["bwt"] > -0.05  # task 0 is kept: task 1's conflicting steps are projected
    assert runs["gem"].accuracy_matrix[1, 0] > 0.9


def test_gem_learns_compatible_tasks(toy_task_stream):
    result = engine.run(_gem(toy_task_stream), toy_task_stream, epochs=2, batch_size=8)
    assert result.metrics["acc"] > 0.9 and result.metrics["bwt"] > -0.05


def test_same_seed_same_run_and_state_round_trip(toy_class_stream):
    first = engine.run(_gem(toy_class_stream, seed=1), toy_class_stream, batch_size=8, seed=1)
    method = _gem(toy_class_stream, seed=1)
    second = engine.run(method, toy_class_stream, batch_size=8, seed=1)
    np.testing.assert_array_equal(first.accuracy_matrix, second.accuracy_matrix)
    assert first.train_loss == second.train_loss
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    fresh = _gem(toy_class_stream, seed=5)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    assert fresh.ring == method.ring and sorted(fresh.memory_x) == [0, 1, 2]
    for k in range(3):
        assert torch.equal(fresh.memory_x[k], method.memory_x[k])
        assert torch.equal(fresh.memory_y[k], method.memory_y[k])
        assert torch.equal(fresh.written[k], method.written[k])
    assert fresh.memory() == method.memory()
    for a, b in zip(fresh.model.parameters(), method.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_defaults_are_the_official_mnist_settings():
    method = GEM(make_model("mlp", (1, 4, 4), 2))
    assert (method.lr, method.n_memories, method.memory_strength, method.eps) == (0.1, 256, 0.5, 1e-3)
