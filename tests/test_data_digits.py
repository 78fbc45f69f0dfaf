"""scikit-learn's digits through load_dataset, and the fixed stratified split.

The scikit-learn wheel is fetched once into the default data dir's ``downloads`` (shared with
the user's cache, only ever added to) and reached from the temp root through a symlink.
"""

import hashlib

import numpy as np
import pytest

from lifelong.data import DatasetUnavailableError, data_dir, load_dataset
from lifelong.data.digits import build, stratified_split


@pytest.fixture
def root(tmp_path):
    shared = data_dir() / "downloads"
    shared.mkdir(parents=True, exist_ok=True)
    (tmp_path / "downloads").symlink_to(shared, target_is_directory=True)
    return tmp_path


def test_stratified_split_is_fixed_and_per_class():
    labels = np.repeat(np.arange(3), [10, 5, 7])
    train, test = stratified_split(labels, test_fraction=0.2, seed=0)
    assert np.bincount(labels[test]).tolist() == [2, 1, 1]  # floor(0.2 n + 0.5)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(22))
    assert np.all(np.diff(test) > 0) and np.all(np.diff(train) > 0)
    again_train, again_test = stratified_split(labels, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(test, again_test)
    np.testing.assert_array_equal(train, again_train)
    # The exact choice is pinned: RandomState(0) streams are frozen across numpy versions.
    assert test.tolist() == [2, 8, 11, 21]


def test_digits_shapes_classes_and_deterministic_split(root):
    try:
        ds = load_dataset("digits", root=root)
    except DatasetUnavailableError as error:  # no scikit-learn and no way to fetch its wheel
        pytest.skip(str(error))
    assert ds.name == "digits" and ds.pixel_max == 16
    assert ds.class_names == tuple("0123456789") and ds.num_classes == 10
    assert ds.x_train.shape == (1438, 8, 8) and ds.x_test.shape == (359, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert int(ds.x_train.max()) == 16 and int(ds.x_test.min()) == 0
    assert np.bincount(ds.y_test).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    assert np.bincount(ds.y_train).tolist() == [142, 146, 142, 146, 145, 146, 145, 143, 139, 144]
    assert ds.x_train[0].tolist()[1] == [0, 0, 13, 15, 10, 15, 5, 0]  # the first sample, a 0
    assert (root / "digits.npz").is_file()

    again = load_dataset("digits", root=root)  # from the .npz now
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(ds, name))
    # The same split on every machine: pinned hash of the test set.
    digest = hashlib.sha256(ds.x_test.tobytes() + ds.y_test.astype("<i8").tobytes()).hexdigest()
    assert digest == PINNED_TEST_SHA256


def test_no_source_names_both(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="pip install scikit-learn") as info:
        build(tmp_path, use_sklearn=False, use_wheel=False)
    assert info.value.attempts == ()


PINNED_TEST_SHA256 = "aef57afdfc309c552dd16523ca6b4f6d50e7b41568ba260c1f44a4204ad3cfcf"
