"""Benchmarks on the real data: the GEM protocols' properties, splits, seeding and reordering."""

import numpy as np
import pytest
import torch

from lifelong.benchmarks import make_stream
from lifelong.benchmarks.images import image_tensors
from lifelong.benchmarks.rotated import rotate, task_angles
from lifelong.params import ParamError


@pytest.fixture(scope="module")
def mnist_test():
    return image_tensors("mnist", "test")


def test_permuted_mnist_every_task_its_own_permutation(mnist_test):
    stream = make_stream("permuted-mnist", n_tasks=3, train_per_task=50, test_per_task=40, seed=5)
    assert stream.scenario == "domain" and stream.n_units == 10 and stream.n_tasks == 3
    assert [len(t.y_train) for t in stream] == [50, 50, 50]
    assert [len(t.y_test) for t in stream] == [40, 40, 40]
    x_test, y_test = mnist_test
    originals = x_test.flatten(1)
    for task in stream:
        x = task.x_test.flatten(1)
        # each permuted image is one MNIST test image with its pixels reordered
        sums = x.sort(1).values
        match = [(originals.sort(1).values == row).all(1).nonzero() for row in sums[:3]]
        assert all(len(m) >= 1 for m in match)
        # and not the identity, the first task included
        assert not any(torch.equal(x[i], originals[m[0, 0]]) for i, m in enumerate(match))
    # seeded: the same seed gives the same stream, another seed another
    again = make_stream("permuted-mnist", n_tasks=3, train_per_task=50, test_per_task=40, seed=5)
    other = make_stream("permuted-mnist", n_tasks=3, train_per_task=50, test_per_task=40, seed=6)
    assert torch.equal(again[2].x_train, stream[2].x_train)
    assert not torch.equal(other[0].x_train, stream[0].x_train)


def test_permuted_mnist_defaults_are_the_gem_protocol():
    stream = make_stream("permuted-mnist", n_tasks=2)
    assert len(stream[0].y_train) == 1000 and len(stream[0].y_test) == 10000
    assert stream[0].x_train.shape[1:] == (1, 28, 28)
    assert 0.0 <= float(stream[0].x_train.min()) and float(stream[0].x_train.max()) <= 1.0


def test_rotated_angles_lie_in_their_bins_and_are_seeded():
    angles = task_angles(20, 0.0, 180.0, torch.Generator().manual_seed(0))
    assert all(9 * t <= a < 9 * (t + 1) for t, a in enumerate(angles))
    assert angles == task_angles(20, 0.0, 180.0, torch.Generator().manual_seed(0))
    assert angles != task_angles(20, 0.0, 180.0, torch.Generator().manual_seed(1))
    stream = make_stream("rotated-mnist", n_tasks=4, train_per_task=20, test_per_task=20, seed=0)
    recorded = stream.params["angles"]
    assert all(45 * t <= a < 45 * (t + 1) for t, a in enumerate(recorded))


def test_rotate_by_90_degrees_turns_the_image():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 2:6, 10:18] = 1.0  # a horizontal 4x8 bar near the top
    turned = rotate(image, 90.0)[0, 0]
    assert torch.allclose(rotate(image, 0.0), image, atol=1e-5)
    rows, cols = (turned > 0.5).any(1).sum(), (turned > 0.5).any(0).sum()
    assert (int(rows), int(cols)) == (8, 4)  # now a vertical 8x4 bar ...
    assert turned[:, 8:20].sum() < 1e-3  # ... at the left or right edge
    assert abs(float(turned.sum()) - float(image.sum())) < 0.5  # mass is kept
    assert torch.allclose(rotate(rotate(image, 90.0), 270.0), image, atol=1e-4)


@pytest.mark.parametrize("name, dataset_size", [("split-mnist", 60000),
                                                ("split-fashion-mnist", 60000),
                                                ("split-digits", 1438)])
def test_split_benchmarks(name, dataset_size):
    stream = make_stream(name)
    assert stream.n_tasks == 5 and stream.scenario == "task"
    assert [t.classes for t in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert sum(len(t.y_train) for t in stream) == dataset_size
    for task in stream:
        assert set(task.y_train.unique().tolist()) == set(task.classes)
    cls = make_stream(name, scenario="class", class_seed=1)
    assert sorted(c for t in cls for c in t.classes) == list(range(10))
    assert [t.classes for t in cls] != [t.classes for t in stream]


def test_fashion_mnist_has_6000_per_class():
    stream = make_stream("split-fashion-mnist")
    counts = np.bincount(torch.cat([t.y_train for t in stream]).numpy())
    assert counts.tolist() == [6000] * 10


def test_reordering_a_real_stream():
    stream = make_stream("split-digits")
    order = [4, 3, 2, 1, 0]
    reordered = stream.reordered(order)
    assert [t.classes for t in reordered] == [(8, 9), (6, 7), (4, 5), (2, 3), (0, 1)]
    assert torch.equal(reordered[0].x_test, stream[4].x_test)
    assert reordered.params["order"] == ["8-9", "6-7", "4-5", "2-3", "0-1"]


@pytest.mark.parametrize("params, message", [
    ({"n_tasks": 0}, "n_tasks=0 is out of range; allowed: >= 1"),
    ({"train_per_task": -1}, "train_per_task=-1 is out of range; allowed: >= 1"),
    ({"scenario": "other"}, "allowed values: domain, task, class"),
])
def test_bad_benchmark_parameters(params, message):
    with pytest.raises((ValueError, ParamError), match=message):
        make_stream("permuted-mnist", **params)
