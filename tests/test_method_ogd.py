"""OGD (Farajtabar et al. 2020): output gradients, the orthonormal basis, the projected step."""

import pytest
import torch
from conftest import toy_parts

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import make_method
from lifelong.methods.base import flat_gradient
from lifelong.methods.ogd import orthonormalise
from lifelong.models import make_model
from lifelong.params import ParamError


def ogd(stream, seed=0, hidden=(16,), **params):
    model = make_model("mlp", stream.input_shape, stream.n_units, seed=seed, hidden=hidden)
    return make_method("ogd", model, seed=seed, **params)


def train(method, task, batch_size=8):
    """The engine's hooks for one task, in order, without evaluation."""
    method.set_training(True)
    method.begin_task(task)
    for index in torch.arange(len(task.y_train)).split(batch_size):
        method.observe(task.x_train[index], task.y_train[index], task.id)
    method.end_task(task)


def permuted_blobs(n_tasks=3, n=200, classes=4, seed=0):
    """Gaussian class blobs in 16 dimensions, each later task under its own feature permutation.

    One shared head (domain-incremental), learnable jointly; plain SGD forgets earlier permutations.
    """
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 16, generator=generator)
    parts = []
    for t in range(n_tasks):
        y = torch.randint(0, classes, (n,), generator=generator)
        x = centers[y] + 0.8 * torch.randn(n, 16, generator=generator)
        if t:
            x = x[:, torch.randperm(16, generator=generator)]
        cut = n * 3 // 4
        parts.append((f"blobs-{t}", x[:cut].reshape(-1, 1, 4, 4), y[:cut], x[cut:].reshape(-1, 1, 4, 4),
                      y[cut:]))
    return build_stream("blobs", "domain", parts, (1, 4, 4))


@pytest.mark.parametrize("variant", ["gtl", "ave", "all"])
def test_vectorised_output_gradients_equal_a_backward_loop(variant, toy_task_stream):
    method = ogd(toy_task_stream, variant=variant)
    task = toy_task_stream[1]  # units 2, 3 of 6
    train(method, task)
    x, y = task.x_train[:12], task.y_train[:12]
    units = method.units(task)
    assert units.tolist() == [2, 3]
    fast = method.output_gradients(x, y, units, task.id)
    slow = method.output_gradients_loop(x, y, units, task.id)
    assert fast.shape == slow.shape == (12 * (2 if variant == "all" else 1), 374)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast.abs().sum() > 0
    # only the task's own units are differentiated: the other tasks' head rows get zero gradient
    head = method.model.head
    offset = 374 - head.weight.numel() - head.bias.numel()
    head_weight = fast[:, offset:offset + head.weight.numel()].reshape(len(fast), 6, 16)
    assert head_weight[:, [0, 1, 4, 5]].abs().max() == 0
    assert head_weight[:, [2, 3]].abs().max() > 0


def test_basis_is_orthonormal_and_projected_gradient_orthogonal_to_stored_ones(toy_task_stream):
    method = ogd(toy_task_stream, lr=0.1, memory_per_task=40)
    stream = toy_task_stream
    train(method, stream[0])
    index = method.chosen[0]
    assert len(index) == 40 and len(set(index.tolist())) == 40
    # the stored directions are exactly the output gradients of the chosen examples at these weights
    stored = method.output_gradients_loop(stream[0].x_train[index], stream[0].y_train[index],
                                          method.units(stream[0]), 0)
    basis = method.basis
    assert basis.shape == (40, 374)  # 40 independent directions in 374 dimensions: none dropped
    torch.testing.assert_close(basis @ basis.T, torch.eye(40), atol=1e-5, rtol=0)
    in_span = (stored @ basis.T) @ basis
    torch.testing.assert_close(in_span, stored, atol=1e-5 * float(stored.norm(dim=1).max()), rtol=0)

    method.begin_task(stream[1])
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]
    method.model.zero_grad()
    method.loss(method.model(x), y).backward()
    raw = flat_gradient(method.trained)
    method.observe(x, y, 1)
    projected = flat_gradient(method.trained)  # observe leaves the projected gradient it stepped along
    assert projected.norm() > 0.1 * raw.norm()
    cosines = (stored @ projected) / (stored.norm(dim=1) * projected.norm())
    assert cosines.abs().max() < 1e-5
    assert (stored @ raw / (stored.norm(dim=1) * raw.norm())).abs().max() > 0.01  # raw was not
    torch.testing.assert_close(projected, raw - basis.T @ (basis @ raw), atol=1e-6, rtol=0)

    for task in stream.tasks[1:]:
        train(method, task)
    basis = method.basis
    assert len(basis) == 120
    torch.testing.assert_close(basis @ basis.T, torch.eye(120), atol=1e-5, rtol=0)


def test_a_projected_step_changes_stored_outputs_only_to_second_order():
    stream = permuted_blobs(n_tasks=2)
    method = ogd(stream, lr=0.05, memory_per_task=30)
    train(method, stream[0])
    x0, y0 = stream[0].x_train[method.chosen[0]], stream[0].y_train[method.chosen[0]]
    before = method.predict(x0).gather(1, y0[:, None])
    start = {k: v.clone() for k, v in method.model.state_dict().items()}
    x, y = stream[1].x_train[:8], stream[1].y_train[:8]

    def change(name, lr):
        """Largest change of a stored example's ground-truth logit after one step of ``name``."""
        method.model.load_state_dict(start)
        stepper = method if name == "ogd" else make_method("finetune", method.model)
        stepper.lr = lr
        stepper.optimizer = None
        stepper.begin_task(stream[1])
        stepper.observe(x, y, 1)
        return float((method.predict(x0).gather(1, y0[:, None]) - before).abs().max())

    sgd, ogd_step, ogd_half = change("finetune", 0.01), change("ogd", 0.01), change("ogd", 0.005)
    assert sgd > 0.01 and ogd_step < 0.01 * sgd  # plain SGD moves them at first order, OGD does not
    assert ogd_step / ogd_half > 3.0  # half the step, about a quarter of the change: second order


def test_ogd_forgets_less_than_finetune():
    stream = permuted_blobs()

    def run(name, **params):
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(32,))
        return engine.run(make_method(name, model, lr=0.1, **params), stream, epochs=5, batch_size=8)

    finetune, ogd_gtl = run("finetune"), run("ogd")
    assert finetune.accuracy_matrix[0, 0] > 0.95 and ogd_gtl.accuracy_matrix[0, 0] > 0.95
    assert finetune.accuracy_matrix[2, 0] < 0.75  # plain SGD loses the first permutation
    assert ogd_gtl.accuracy_matrix[2, 0] > 0.9
    assert ogd_gtl.metrics["bwt"] > finetune.metrics["bwt"] + 0.1
    assert ogd_gtl.metrics["acc"] > finetune.metrics["acc"] + 0.05
    assert ogd_gtl.accuracy_matrix[2, 2] > 0.95  # the projected steps still learn the new task


def test_ogd_all_keeps_a_task_that_the_next_one_contradicts():
    """Flipped labels on the same inputs: OGD-ALL freezes every logit of task 0 on its examples.

    (GTL protects only the true label's logit, so the other logit can overtake it: it forgets here.)
    """
    stream = build_stream("flip", "domain", toy_parts(n_tasks=2, disjoint=False, flip=True), (1, 4, 4))
    results = {}
    for name, params in [("finetune", {}), ("ogd", {"variant": "all"})]:
        model = make_model("mlp", stream.input_shape, stream.n_units, seed=0, hidden=(16,))
        results[name] = engine.run(make_method(name, model, lr=0.1, **params), stream, epochs=6,
                                   batch_size=8).accuracy_matrix
    assert results["finetune"][1, 0] < 0.2
    assert results["ogd"][0, 0] == results["ogd"][1, 0] == 1.0


def test_bounded_basis_and_memory_report(toy_task_stream):
    method = ogd(toy_task_stream, memory_per_task=20, max_basis=50, lr=0.1)
    for task in toy_task_stream:
        train(method, task)
        report = method.memory()
        assert report["basis_vectors"] == len(method.basis) <= 50
        assert report["basis_bytes"] == len(method.basis) * 374 * 4
    assert report == {"parameters": 374, "parameter_bytes": 374 * 4, "basis_vectors": 50,
                      "basis_bytes": 50 * 374 * 4, "basis_capacity": 50, "basis_dropped": 10}
    torch.testing.assert_close(method.basis @ method.basis.T, torch.eye(50), atol=1e-5, rtol=0)


def test_all_stores_a_direction_per_unit_and_dependent_vectors_are_dropped(toy_task_stream):
    method = ogd(toy_task_stream, variant="all", memory_per_task=10)
    train(method, toy_task_stream[0])
    assert len(method.basis) == 20  # 10 examples x the task's 2 units
    rows = method.output_gradients(toy_task_stream[0].x_train[:5], toy_task_stream[0].y_train[:5],
                                   method.units(toy_task_stream[0]), 0)
    new, dropped = orthonormalise(torch.cat([method.basis[:3], 2.0 * method.basis[:2]]), method.blocks, 10)
    assert new.shape == (0, 374) and dropped == 0  # already in the span: nothing new
    new, dropped = orthonormalise(torch.cat([rows, rows]), [], 100)
    assert len(new) == 10 and dropped == 0  # duplicates dropped by their tiny residual
    torch.testing.assert_close(new @ new.T, torch.eye(10), atol=1e-5, rtol=0)


def test_nearly_dependent_vectors_are_still_orthogonalised_to_rounding_level():
    generator = torch.Generator().manual_seed(0)
    stored = torch.linalg.qr(torch.randn(5000, 60, generator=generator))[0].T.contiguous()
    blocks = [stored[:30], stored[30:]]
    # 1% outside the span: one classical pass would leave them ~1e-5 off orthogonal in float32
    vectors = torch.randn(40, 60, generator=generator) @ stored + 1e-2 * torch.randn(40, 5000,
                                                                                     generator=generator)
    new, left_out = orthonormalise(vectors, blocks, 100)
    assert new.shape == (40, 5000) and left_out == 0
    assert (new @ stored.T).abs().max() < 1e-6
    torch.testing.assert_close(new @ new.T, torch.eye(40), atol=1e-6, rtol=0)
    new, left_out = orthonormalise(vectors, blocks, 25)
    assert len(new) == 25 and left_out == 15


def test_examples_are_drawn_from_the_seed_and_state_round_trips(toy_task_stream):
    a, b, c = (ogd(toy_task_stream, seed=s, memory_per_task=15) for s in (1, 1, 2))
    for method in (a, b, c):
        train(method, toy_task_stream[0])
    assert torch.equal(a.chosen[0], b.chosen[0]) and not torch.equal(a.chosen[0], c.chosen[0])
    assert torch.equal(a.basis, b.basis)
    fresh = ogd(toy_task_stream, seed=1, memory_per_task=15)
    fresh.load_state_dict(a.state_dict())
    for method in (a, fresh):
        train(method, toy_task_stream[1])
    assert torch.equal(a.chosen[1], fresh.chosen[1]) and torch.equal(a.basis, fresh.basis)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), fresh.model.parameters(),
                                                 strict=True))


def test_parameters_are_validated(toy_task_stream):
    model = make_model("mlp", (1, 4, 4), 6, hidden=(16,))
    with pytest.raises(ParamError, match="variant='best' is not allowed; allowed values: gtl, all, ave"):
        make_method("ogd", model, variant="best")
    with pytest.raises(ParamError, match="max_basis=0 is out of range"):
        make_method("ogd", model, max_basis=0)
    method = make_method("ogd", model)
    assert (method.lr, method.memory_per_task, method.variant, method.max_basis) == (1e-3, 200, "gtl", 4000)

