import warnings

import pytest
import torch
from torch import nn

from lifelong.methods.penalty import (
    QuadraticAnchor,
    detached,
    summed_example_gradients,
    trainable,
    warn_if_unstable,
)
from lifelong.models import Network


def random_tensors(generator, shapes=(("w", (3, 2)), ("b", (3,))), positive=False):
    out = {name: torch.randn(*shape, generator=generator) for name, shape in shapes}
    return {n: t.abs() for n, t in out.items()} if positive else out


def explicit(theta, terms):
    """sum_k sum_i F_k,i (theta_i - a_k,i)^2 written out."""
    return sum((f[n] * (theta[n] - a[n]) ** 2).sum() for f, a in terms for n in theta)


def test_merges_against_their_formulas():
    g = torch.Generator().manual_seed(0)
    fishers = [random_tensors(g, positive=True) for _ in range(3)]
    anchors = [random_tensors(g) for _ in range(3)]
    theta = {n: t.requires_grad_() for n, t in random_tensors(g).items()}
    stores = {merge: QuadraticAnchor(merge) for merge in QuadraticAnchor.MERGES}
    for store in stores.values():
        assert store.penalty(theta).item() == 0.0 and not store.active
        for f, a in zip(fishers, anchors, strict=True):
            store.consolidate(a, f)
    # sum: Omega = F_0 + F_1 + F_2, anchor = the last
    total = {n: fishers[0][n] + fishers[1][n] + fishers[2][n] for n in theta}
    expected = explicit(theta, [(total, anchors[2])])
    assert stores["sum"].penalty(theta).item() == pytest.approx(expected.item(), rel=1e-6)
    # mean: ((F_0 + F_1) / 2 * 2 + F_2) / 3 = the mean of the three, anchor = the last
    mean = {n: total[n] / 3 for n in theta}
    expected = explicit(theta, [(mean, anchors[2])])
    assert stores["mean"].penalty(theta).item() == pytest.approx(expected.item(), rel=1e-6)
    # separate: one term per consolidation, value and gradient
    expected = explicit(theta, list(zip(fishers, anchors, strict=True)))
    value = stores["separate"].penalty(theta)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    got = torch.autograd.grad(value, list(theta.values()))
    want = torch.autograd.grad(expected, list(theta.values()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert stores["separate"].memory("fisher") == {"fisher_values": 9, "fisher_bytes": 36,
                                                   "anchor_values": 9, "anchor_bytes": 36}


def test_separate_keeps_a_parameter_no_task_found_important_at_the_latest_value():
    store = QuadraticAnchor("separate")
    store.consolidate({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.0, 1.0])})
    store.consolidate({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 3.0])})
    torch.testing.assert_close(store.anchor["w"], torch.tensor([3.0, 3.5]))  # (1*2 + 3*4) / 4
    theta = {"w": torch.tensor([0.0, 0.0])}
    assert store.penalty(theta).item() == pytest.approx(1 * 2.0 ** 2 + 3 * 4.0 ** 2)


def test_state_round_trip_and_bad_merge():
    g = torch.Generator().manual_seed(1)
    store = QuadraticAnchor("separate")
    for _ in range(2):
        store.consolidate(random_tensors(g), random_tensors(g, positive=True))
    copy = QuadraticAnchor.from_state(store.state_dict())
    theta = random_tensors(g)
    assert copy.penalty(theta).item() == store.penalty(theta).item()
    assert copy.count == 2 and copy.merge == "separate"
    with pytest.raises(ValueError, match="merge='median' is not one of"):
        QuadraticAnchor("median")


def test_summed_example_gradients_match_one_backward_per_example():
    model = Network(nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Dropout(0.5)),
                    nn.Linear(5, 3), seed=0)
    model.train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 1, 2, 2, generator=g), torch.randint(0, 3, (300,), generator=g)

    def score(logits, label):
        return torch.logsumexp(logits, 0) - logits.gather(0, label[None])[0]

    got = summed_example_gradients(model, x, y, score, torch.square)
    assert model.training  # restored
    model.eval()  # dropout off, as the function computes
    want = {n: torch.zeros_like(p) for n, p in trainable(model).items()}
    for xi, yi in zip(x, y, strict=True):
        grads = torch.autograd.grad(score(model(xi[None])[0], yi), list(trainable(model).values()))
        for n, gr in zip(want, grads, strict=True):
            want[n] += gr ** 2
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)
    assert set(detached(trainable(model))) == set(got)


def test_instability_warning_threshold():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unstable("ewc", 0.1, 20.0, "lamb")  # lr * curvature = 2: the distance does not grow
    with pytest.warns(RuntimeWarning, match=r"ewc: lr \* \(largest curvature of the penalty\) = 0.1 \* 20.1"):
        warn_if_unstable("ewc", 0.1, 20.1, "lamb")
