"""The mixture benchmark: MNIST, Fashion-MNIST and upscaled 8x8 digits, one 10-class task each.

Tests that need a dataset skip, naming it and why, when it cannot be loaded on this machine; the
subsampling and upscaling rules are also checked on synthetic inputs that need no data.
"""

import numpy as np
import pytest
import torch

from lifelong.benchmarks import BENCHMARKS, make_stream
from lifelong.benchmarks.images import image_tensors
from lifelong.benchmarks.mixture import DATASETS, mixture, stratified_subsample, upscale
from lifelong.cli import main
from lifelong.data import DatasetUnavailableError, load_dataset
from lifelong.params import ParamError


def need(*names: str) -> None:
    """Skip the calling test unless every dataset in ``names`` loads here."""
    for name in names:
        try:
            load_dataset(name)
        except DatasetUnavailableError as error:
            pytest.skip(f"dataset {name!r} is not available on this machine ({len(error.attempts)} "
                        f"sources tried); to get it: {error.how_to_get}")


@pytest.fixture(scope="module")
def small():
    need(*DATASETS)
    return make_stream("mixture", train_per_task=100, test_per_task=50, seed=3)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``A`` with ``A @ v`` the 1-D bilinear resize of ``v`` (pixel centres aligned, edges clamped)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        low = int(np.floor(src))
        high, w = min(low + 1, n_in - 1), src - low
        a[i, low] += 1 - w
        a[i, high] += w
    return a


def test_shapes_range_names_and_one_block_of_units_per_task(small):
    assert small.name == "mixture" and small.scenario == "task" and small.input_shape == (1, 28, 28)
    assert [t.name for t in small] == ["mnist", "fashion-mnist", "digits"]
    assert small.n_units == 30
    assert small.layout.task_units == tuple(tuple(range(10 * t, 10 * t + 10)) for t in range(3))
    for t, task in enumerate(small):
        assert task.classes == tuple(range(10))
        assert task.x_train.shape == (100, 1, 28, 28) and task.x_test.shape == (50, 1, 28, 28)
        assert task.x_train.dtype == torch.float32
        for x in (task.x_train, task.x_test):
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
            assert float(x.max()) > 0.9  # scaled to [0, 1], not left at 0..16 or 0..255 / 256
        for y in (task.y_train, task.y_test):  # every class, on the task's own units
            assert sorted(y.unique().tolist()) == list(range(10 * t, 10 * t + 10))
        eval_units = small.layout.eval_mask(t).nonzero().squeeze(1).tolist()
        assert eval_units == list(range(10 * t, 10 * t + 10))
    cls = make_stream("mixture", train_per_task=10, test_per_task=10, scenario="class")
    assert cls.layout.task_units == small.layout.task_units and cls.layout.disjoint
    assert cls.layout.eval_mask(None) is None  # no task id: scored over all 30 units
    assert cls.layout.train_mask(1).nonzero().squeeze(1).tolist() == list(range(20))


def test_images_keep_their_labels(small):
    """Each MNIST image of the stream is an MNIST test image whose label is its unit."""
    x, y = image_tensors("mnist", "test")
    label_of = {bytes(image.numpy().tobytes()): int(label) for image, label in zip(x, y, strict=True)}
    task = small[0]
    assert [label_of[bytes(image.numpy().tobytes())] for image in task.x_test] == task.y_test.tolist()


def test_subsampling_is_seeded_stratified_and_independent_of_the_other_tasks(small):
    again = make_stream("mixture", train_per_task=100, test_per_task=50, seed=3)
    other = make_stream("mixture", train_per_task=100, test_per_task=50, seed=4)
    for a, b, c in zip(small, again, other, strict=True):
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
        assert not torch.equal(a.x_train, c.x_train)
    # Fashion-MNIST has 6,000 training images per class: exactly 10 each of 100
    assert (small[1].y_train - 10).bincount().tolist() == [10] * 10
    # MNIST's classes are uneven: each gets its share within the documented bound
    counts = np.bincount(load_dataset("mnist").y_train)
    share = 100 * counts / counts.sum()
    got = (small[0].y_train).bincount().numpy()
    assert np.all(got <= share + 1) and np.all(got >= share - 10 * counts / counts.sum())
    # a dataset's draw depends on the seed alone, not on the other datasets or their order
    alone = make_stream("mixture", datasets="digits,mnist", train_per_task=100, test_per_task=50,
                        seed=3)
    assert torch.equal(alone[0].x_train, small[2].x_train)
    assert torch.equal(alone[1].x_test, small[0].x_test)
    assert torch.equal(alone[0].y_train + 20, small[2].y_train)  # same labels, other units
    # the test draw does not depend on train_per_task
    more = make_stream("mixture", datasets="digits", train_per_task=200, test_per_task=50, seed=3)
    assert torch.equal(more[0].x_test, small[2].x_test)


def test_stratified_subsample_on_skewed_classes():
    labels = torch.tensor([0] * 1000 + [1] * 10 + [2] * 3)
    n_total, counts = len(labels), np.array([1000, 10, 3])
    for n in (3, 5, 50, 500):
        picked = stratified_subsample(labels, n, torch.Generator().manual_seed(0))
        assert len(picked) == n and len(set(picked.tolist())) == n
        got = np.bincount(labels[picked].numpy(), minlength=3)
        assert np.all(got >= 1)  # every class, however rare, once n >= the number of classes
        share = n * counts / n_total
        assert np.all(got <= share + 1) and np.all(got >= share - 3 * counts / n_total)
    # nested: the draw of n is a prefix of the draw of n + 1 (same generator seed)
    small = stratified_subsample(labels, 20, torch.Generator().manual_seed(1))
    large = stratified_subsample(labels, 21, torch.Generator().manual_seed(1))
    assert torch.equal(large[:20], small)
    everything = stratified_subsample(labels, None, torch.Generator().manual_seed(1))
    assert sorted(everything.tolist()) == list(range(n_total))


def test_upscale_of_a_known_pattern():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, :, 2] = 1.0  # a vertical bar in column 2
    big = upscale(image)[0, 0]
    assert big.shape == (28, 28)
    assert torch.allclose(big, big[0].expand(28, 28), atol=1e-6)  # a vertical bar in every row
    # output column i samples input coordinate (i + 0.5) * 8 / 28 - 0.5: columns 5..11 see column 2
    assert (big[0] > 0).nonzero().squeeze(1).tolist() == list(range(5, 12))
    expected = [1 - abs((i + 0.5) / 3.5 - 0.5 - 2) for i in range(5, 12)]
    assert torch.allclose(big[0, 5:12], torch.tensor(expected), atol=1e-6)
    assert abs(float(big[0, 8]) - 0.9285714) < 1e-6  # 1.9286: mostly column 2
    assert torch.allclose(upscale(torch.full((2, 1, 8, 8), 0.5)), torch.full((2, 1, 28, 28), 0.5))
    unchanged = torch.rand(2, 1, 28, 28)
    assert upscale(unchanged) is unchanged  # MNIST-sized images are left as they are


def test_digits_are_the_8x8_digits_rescaled_and_upscaled_bilinearly():
    need("digits")
    raw = load_dataset("digits")
    a = bilinear_matrix(8, 28)
    by_hand = torch.from_numpy(a @ (raw.x_test / 16.0) @ a.T).float()  # (359, 28, 28)
    stream = make_stream("mixture", datasets="digits")
    task = stream[0]
    assert task.x_test.shape == (359, 1, 28, 28)
    distance = torch.cdist(task.x_test.flatten(1), by_hand.flatten(1),
                           compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.argmin(1)
    assert sorted(nearest.tolist()) == list(range(359))  # one-to-one
    assert float(distance.min(1).values.max()) < 1e-4
    assert torch.equal(task.y_test, torch.from_numpy(raw.y_test)[nearest])
    assert float(task.x_test.max()) > 0.999  # 16 / 16 where four neighbouring pixels are all 16


def test_normalize_uses_each_dataset_statistics():
    need("mnist", "digits")
    plain = make_stream("mixture", datasets="mnist,digits", train_per_task=50, test_per_task=20)
    normal = make_stream("mixture", datasets="mnist,digits", train_per_task=50, test_per_task=20,
                         normalize=True)
    stats = normal.params["normalization"]
    # the classic MNIST statistics of its 60,000 training images in [0, 1]
    assert abs(stats["mnist"]["mean"] - 0.1307) < 1e-4 and abs(stats["mnist"]["std"] - 0.3081) < 1e-4
    x, _ = image_tensors("digits", "train")
    big = upscale(x).double()
    assert abs(stats["digits"]["mean"] - float(big.mean())) < 1e-9
    assert abs(stats["digits"]["std"] - float(big.std(unbiased=False))) < 1e-9
    for p, n in zip(plain, normal, strict=True):
        mean, std = stats[p.name]["mean"], stats[p.name]["std"]
        assert torch.allclose(n.x_test, (p.x_test - mean) / std, atol=1e-5)
        assert torch.equal(n.y_train, p.y_train)
    assert "normalization" not in plain.params


def test_reordering_the_mixture(small):
    reordered = small.reordered([2, 0, 1])
    assert [t.name for t in reordered] == ["digits", "mnist", "fashion-mnist"]
    assert [t.id for t in reordered] == [0, 1, 2]
    # each task keeps its data, labels and units; only the positions change
    assert reordered.layout.task_units[0] == tuple(range(20, 30))
    assert torch.equal(reordered[0].x_test, small[2].x_test)
    assert torch.equal(reordered[1].y_train, small[0].y_train)
    assert reordered.layout.eval_mask(0).nonzero().squeeze(1).tolist() == list(range(20, 30))
    assert reordered.params["order"] == ["digits", "mnist", "fashion-mnist"]


@pytest.mark.parametrize("params, message", [
    ({"datasets": "mnist,cifar10"}, "datasets='cifar10' is not allowed; allowed values: mnist, "
                                    "fashion-mnist, digits"),
    ({"scenario": "domain"}, "scenario='domain' is not allowed; allowed values: task, class"),
    ({"train_per_task": 5}, "train_per_task=5 is out of range; allowed: >= 10"),
    ({"datasets": "mnist,mnist"}, "datasets lists 'mnist' twice"),
    ({"datasets": ""}, "datasets is empty; give one or more of: mnist, fashion-mnist, digits"),
])
def test_bad_parameters(params, message):
    with pytest.raises((ParamError, ValueError), match=message):
        make_stream("mixture", **params)


def test_direct_calls_are_checked_too():
    with pytest.raises(ValueError, match="datasets has 'svhn'; allowed values: mnist"):
        mixture(datasets=("svhn",))
    with pytest.raises(ValueError, match="scenario='domain' does not apply to the mixture"):
        mixture(scenario="domain")
    with pytest.raises(ValueError, match="test_per_task=3 must be at least 10"):
        mixture(test_per_task=3)
    with pytest.raises(ValueError, match="datasets lists 'digits' twice"):
        mixture(datasets="digits, digits")  # a string is split at commas, not into letters


def test_registered_and_listed(capsys):
    assert "mixture" in BENCHMARKS.names
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mixture" in out and "datasets=('mnist', 'fashion-mnist', 'digits')" in out
