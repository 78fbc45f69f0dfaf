"""The in-memory dataset type, the error raised when no source works, and the source loop.

Every dataset module (``mnist.py``, ``fashion_mnist.py``, ``digits.py``) describes itself with a
:class:`DatasetSpec` and builds its arrays by trying an ordered list of sources with
:func:`first_working_source`; the failures of all sources end up in one
:class:`DatasetUnavailableError`.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

log = logging.getLogger("lifelong.data")

T = TypeVar("T")


class Splits(NamedTuple):
    """Raw train/test arrays as a source produced them (before they become an ArrayDataset)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True, eq=False, repr=False)
class ArrayDataset:
    """An image-classification dataset held in memory as numpy arrays.

    Attributes:
        name: the dataset's name as given to ``load_dataset`` (e.g. ``"mnist"``).
        x_train, x_test: ``uint8`` images of shape ``(N, H, W)``.
        y_train, y_test: ``int64`` labels of shape ``(N,)``, in ``range(len(class_names))``.
        pixel_max: the largest possible pixel value (255 for MNIST, 16 for digits); divide by it
            to get values in [0, 1].
        class_names: one name per label.

    The constructor checks dtypes, shapes and label ranges and raises ``ValueError`` naming the
    offending field.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pixel_max: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n_classes = len(self.class_names)
        if n_classes < 2:
            raise ValueError(f"{self.name}: class_names must name at least 2 classes")
        if not isinstance(self.pixel_max, int) or not 0 < self.pixel_max <= 255:
            raise ValueError(f"{self.name}: pixel_max must be an int in 1..255, got {self.pixel_max!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3:
                raise ValueError(f"{self.name}: x_{split} must be a uint8 array (N, H, W), got "
                                 f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
                raise ValueError(f"{self.name}: y_{split} must be an int64 array (N,), got "
                                 f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: x_{split} has {len(x)} images but y_{split} "
                                 f"has {len(y)} labels")
            if len(y) and (y.min() < 0 or y.max() >= n_classes):
                raise ValueError(f"{self.name}: y_{split} has labels outside 0..{n_classes - 1}")
            if x.size and x.max() > self.pixel_max:
                raise ValueError(f"{self.name}: x_{split} has pixels above pixel_max="
                                 f"{self.pixel_max}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {self.x_train.shape[1:]} and test "
                             f"images {self.x_test.shape[1:]} differ in size")

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(class_names)``."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one image."""
        return self.x_train.shape[1], self.x_train.shape[2]

    def __repr__(self) -> str:
        h, w = self.image_shape
        return (f"ArrayDataset(name={self.name!r}, train={len(self.y_train)}, "
                f"test={len(self.y_test)}, image={h}x{w}, classes={self.num_classes}, "
                f"pixel_max={self.pixel_max})")


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like and how to build it from its sources.

    ``build(root)`` returns the :class:`Splits` or raises :class:`DatasetUnavailableError`;
    the other fields are used to check converted ``.npz`` files and built arrays.
    """

    name: str
    build: Callable[[Path], Splits]
    n_train: int
    n_test: int
    image_shape: tuple[int, int]
    pixel_max: int
    class_names: tuple[str, ...]

    def check(self, splits: Splits) -> None:
        """Raise ``ValueError`` unless ``splits`` has this dataset's sizes, dtypes and shapes."""
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
            want_x, want_y = (n, *self.image_shape), (n,)
            if x.shape != want_x or x.dtype != np.uint8:
                raise ValueError(f"x_{split} is {x.dtype} {x.shape}, expected uint8 {want_x}")
            if y.shape != want_y or y.dtype != np.int64:
                raise ValueError(f"y_{split} is {y.dtype} {y.shape}, expected int64 {want_y}")

    def dataset(self, splits: Splits) -> ArrayDataset:
        """Wrap checked ``splits`` into an :class:`ArrayDataset`."""
        self.check(splits)
        return ArrayDataset(self.name, *splits, pixel_max=self.pixel_max,
                            class_names=self.class_names)


class DatasetUnavailableError(RuntimeError):
    """No source of a dataset worked.

    Attributes:
        dataset: the dataset's name.
        attempts: ``(source, reason)`` for every place looked at / source tried, in order.
        how_to_get: what the user can do to make the dataset available.
    """

    def __init__(self, dataset: str, attempts: Sequence[tuple[str, str]], how_to_get: str):
        # Keep the constructor arguments as ``args`` so the error pickles (process pools, Ray).
        super().__init__(dataset, tuple(attempts), how_to_get)
        self.dataset = dataset
        self.attempts = tuple(attempts)
        self.how_to_get = how_to_get

    def __str__(self) -> str:
        lines = [f"Dataset {self.dataset!r} is not available. Tried, in order:"]
        for i, (source, reason) in enumerate(self.attempts, 1):
            reason = reason.replace("\n", "\n       ")
            lines.append(f"  {i}. {source}: {reason}")
        lines.append(f"To get it: {self.how_to_get}")
        return "\n".join(lines)


class SourceUnavailable(Exception):
    """Raised by one source of a dataset, with the reason it cannot deliver the data."""


# Failures that mean "this source does not work here", as opposed to bugs in our own code.
SOURCE_ERRORS: tuple[type[BaseException], ...] = (
    SourceUnavailable, OSError, ValueError, EOFError, zipfile.BadZipFile,
    subprocess.SubprocessError, pickle.UnpicklingError,
)


def describe_error(error: BaseException) -> str:
    """A one-line reason for a failed source (no traceback)."""
    if isinstance(error, SourceUnavailable):
        return str(error)
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


def first_working_source(
    dataset: str,
    sources: Sequence[tuple[str, Callable[[], T]]],
    how_to_get: str,
) -> T:
    """Return the result of the first source that works, trying ``sources`` in order.

    Each source is ``(description, function)``; a function fails by raising one of
    ``SOURCE_ERRORS``. When all fail, raise :class:`DatasetUnavailableError` listing every
    description with its reason.
    """
    attempts: list[tuple[str, str]] = []
    for description, load in sources:
        try:
            result = load()
        except SOURCE_ERRORS as error:
            reason = describe_error(error)
            log.info("%s: %s did not work: %s", dataset, description, reason)
            attempts.append((description, reason))
            continue
        log.info("%s: loaded from %s", dataset, description)
        return result
    raise DatasetUnavailableError(dataset, attempts, how_to_get)
