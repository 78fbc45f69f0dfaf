"""Where datasets live on disk, atomic writes, sha256 checks and the converted ``.npz`` files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from lifelong.data.dataset import DatasetSpec, Splits
from lifelong.io import atomic_write  # noqa: F401  (re-exported for the data sources)

#: Bumped when the layout of the converted .npz files changes; older files are rebuilt.
NPZ_FORMAT = 1
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def data_dir() -> Path:
    """The directory holding converted datasets and downloads.

    ``$LIFELONG_DATA`` if set, else ``$XDG_CACHE_HOME/lifelong`` (when that is an absolute
    path, as the XDG spec requires), else ``~/.cache/lifelong``. Nothing is created here.
    """
    explicit = os.environ.get("LIFELONG_DATA")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "lifelong"


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ChecksumError(ValueError):
    """A file or member does not have any of its expected sha256 values."""

    def __init__(self, what: str, actual: str, expected: Collection[str]):
        want = " or ".join(sorted(expected)) if expected else "(no checksum known)"
        super().__init__(f"{what}: sha256 {actual} does not match the expected {want}")
        self.actual = actual
        self.expected = tuple(expected)


def check_sha256(what: str, data: bytes | bytearray | memoryview,
                 expected: Collection[str]) -> None:
    """Raise :class:`ChecksumError` unless ``sha256(data)`` is one of ``expected``."""
    actual = sha256_bytes(data)
    if actual not in expected:
        raise ChecksumError(what, actual, expected)


def save_npz(path: Path, splits: Splits) -> None:
    """Write ``splits`` (uncompressed, for fast loads) to ``path`` atomically."""
    with atomic_write(path) as f:
        np.savez(f, format=np.int64(NPZ_FORMAT), **splits._asdict())


def load_npz(path: Path, spec: DatasetSpec) -> Splits:
    """Read a converted dataset and check it against ``spec``; ``ValueError`` if it does not fit."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("format", *_NPZ_KEYS) if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}")
        if int(z["format"]) != NPZ_FORMAT:
            raise ValueError(f"{path} has format {int(z['format'])}, expected {NPZ_FORMAT}")
        splits = Splits(*(z[k] for k in _NPZ_KEYS))
    spec.check(splits)
    n_classes = len(spec.class_names)
    for y in (splits.y_train, splits.y_test):
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{path} has labels outside 0..{n_classes - 1}")
    return splits
