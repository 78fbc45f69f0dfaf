"""The data directory, atomic writes, and converted .npz files as load_dataset uses them."""

import dataclasses
import os
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import (
    DATASET_NAMES,
    ArrayDataset,
    DatasetUnavailableError,
    data_dir,
    load_dataset,
    mnist,
    registry,
)
from lifelong.data.cache import atomic_write, load_npz, save_npz
from lifelong.data.dataset import DatasetSpec, Splits


def test_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIFELONG_DATA", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LIFELONG_DATA")
    assert data_dir() == tmp_path / "xdg" / "lifelong"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # invalid per the XDG spec: ignored
    assert data_dir() == Path.home() / ".cache" / "lifelong"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_dir() == Path.home() / ".cache" / "lifelong"
    assert not (tmp_path / "xdg").exists()  # asking does not create anything


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_write(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"half of the second vers")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_write_failure_on_new_file_leaves_nothing(tmp_path):
    target = tmp_path / "new.npz"
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as f:
        f.write(b"x" * 1000)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _tiny_spec(build):
    return DatasetSpec("mnist", build, n_train=4, n_test=2, image_shape=(3, 3), pixel_max=255,
                       class_names=tuple("0123456789"))


def _tiny_splits():
    x = np.arange(4 * 9, dtype=np.uint8).reshape(4, 3, 3)
    return Splits(x, np.array([0, 1, 2, 9]), x[:2] + 1, np.array([3, 4]))


def test_npz_round_trip_and_checks(tmp_path):
    spec, splits = _tiny_spec(None), _tiny_splits()
    path = tmp_path / "t.npz"
    save_npz(path, splits)
    loaded = load_npz(path, spec)
    for a, b in zip(loaded, splits, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    other = dataclasses.replace(spec, n_train=5)
    with pytest.raises(ValueError, match=r"x_train is uint8 \(4, 3, 3\), expected uint8 \(5, 3, 3\)"):
        load_npz(path, other)


def test_load_dataset_converts_once_then_reads_only_the_npz(tmp_path, monkeypatch):
    calls = []

    def build(root):
        calls.append(root)
        return _tiny_splits()

    monkeypatch.setitem(registry._SPECS, "mnist", _tiny_spec(build))
    first = load_dataset("mnist", root=tmp_path)
    assert calls == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz"]
    second = load_dataset("MNIST", root=tmp_path)  # names are case-insensitive
    assert calls == [tmp_path]
    assert isinstance(second, ArrayDataset) and second.name == "mnist"
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert second.y_train.tolist() == [0, 1, 2, 9] and second.pixel_max == 255
    assert repr(second) == ("ArrayDataset(name='mnist', train=4, test=2, image=3x3, "
                            "classes=10, pixel_max=255)")


def test_corrupt_npz_is_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(registry._SPECS, "mnist", _tiny_spec(lambda root: _tiny_splits()))
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with caplog.at_level("WARNING", logger="lifelong.data"):
        ds = load_dataset("mnist", root=tmp_path)
    assert "rebuilding it" in caplog.text
    assert ds.y_test.tolist() == [3, 4]
    assert load_npz(tmp_path / "mnist.npz", _tiny_spec(None)).y_test.tolist() == [3, 4]


def test_unknown_name_lists_the_allowed_names():
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "digits")
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'; choose one of: mnist, "
                                         "fashion-mnist, digits"):
        load_dataset("cifar10")


def test_nothing_works_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._SPECS, "mnist", dataclasses.replace(
        mnist.SPEC, build=partial(mnist.build, mirrors=(), use_wheel=False)))
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", root=tmp_path)
    error = info.value
    message = str(error)
    assert message.startswith("Dataset 'mnist' is not available. Tried, in order:")
    assert f"1. converted file {tmp_path / 'mnist.npz'}: not found" in message
    assert f"2. IDX files in {tmp_path / 'mnist-idx'}: {tmp_path / 'mnist-idx'} does not exist" \
        in message
    assert "3. HTTP mirrors (none configured): no mirrors configured" in message
    assert "put the IDX files train-images-idx3-ubyte.gz" in message
    assert "LIFELONG_MNIST_MIRRORS" in message
    assert isinstance(error, RuntimeError) and error.dataset == "mnist" and len(error.attempts) == 3
    assert list(tmp_path.iterdir()) == []  # nothing half-made was left behind
    clone = pickle.loads(pickle.dumps(error))  # survives process pools
    assert str(clone) == message


def test_array_dataset_validates_its_fields():
    x, y = np.zeros((2, 3, 3), np.uint8), np.array([0, 1])
    ok = ArrayDataset("d", x, y, x, y, pixel_max=16, class_names=("a", "b"))
    assert ok.num_classes == 2 and ok.image_shape == (3, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.name = "other"
    with pytest.raises(ValueError, match="y_train must be an int64 array"):
        ArrayDataset("d", x, y.astype(np.int32), x, y, pixel_max=16, class_names=("a", "b"))
    with pytest.raises(ValueError, match="y_test has labels outside 0..1"):
        ArrayDataset("d", x, y, x, y + 1, pixel_max=16, class_names=("a", "b"))
    with pytest.raises(ValueError, match="x_test has pixels above pixel_max=16"):
        ArrayDataset("d", x, y, x + 17, y, pixel_max=16, class_names=("a", "b"))
    with pytest.raises(ValueError, match="x_train has 2 images but y_train has 1 labels"):
        ArrayDataset("d", x, y[:1], x, y, pixel_max=16, class_names=("a", "b"))
    assert os.fspath(data_dir())  # a real path
