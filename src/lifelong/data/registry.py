"""``load_dataset``: the one entry point that maps a name to a converted, cached dataset."""

from __future__ import annotations

import logging
import time
import zipfile
from os import PathLike
from pathlib import Path

from lifelong.data import digits, fashion_mnist, mnist
from lifelong.data.cache import data_dir, load_npz, save_npz
from lifelong.data.dataset import ArrayDataset, DatasetSpec, DatasetUnavailableError

log = logging.getLogger("lifelong.data")

_SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in
                                  (mnist.SPEC, fashion_mnist.SPEC, digits.SPEC)}

#: The names ``load_dataset`` accepts.
DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; ``ValueError`` naming the allowed names if unknown."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    return _SPECS[key]


def npz_path(name: str, root: str | PathLike[str] | None = None) -> Path:
    """Where the converted ``.npz`` of dataset ``name`` lives."""
    base = Path(root).expanduser() if root is not None else data_dir()
    return base / f"{get_spec(name).name}.npz"


def load_dataset(name: str, root: str | PathLike[str] | None = None) -> ArrayDataset:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`) as numpy arrays.

    The first call converts the dataset from the first of its sources that works (see the
    modules ``mnist``, ``fashion_mnist`` and ``digits`` of this package) and writes
    ``<root>/<name>.npz`` atomically; later calls only read that file. A converted file that
    fails its checks is rebuilt.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"digits"``.
        root: the data directory; default :func:`data_dir` (``$LIFELONG_DATA``, else
            ``$XDG_CACHE_HOME/lifelong`` or ``~/.cache/lifelong``).

    Raises:
        ValueError: ``name`` is not a known dataset.
        DatasetUnavailableError: no source worked; the message lists each one with the reason
            and says how to get the data.
    """
    spec = get_spec(name)
    base = Path(root).expanduser() if root is not None else data_dir()
    path = base / f"{spec.name}.npz"
    cache_attempt = (f"converted file {path}", "not found")
    if path.is_file():
        try:
            return spec.dataset(load_npz(path, spec))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            reason = f"unusable ({type(error).__name__}: {error})"
            log.warning("%s: %s is %s; rebuilding it", spec.name, path, reason)
            cache_attempt = (f"converted file {path}", reason)
    start = time.monotonic()
    try:
        splits = spec.build(base)
    except DatasetUnavailableError as error:
        raise DatasetUnavailableError(spec.name, (cache_attempt, *error.attempts),
                                      error.how_to_get) from None
    dataset = spec.dataset(splits)
    try:
        save_npz(path, splits)
    except OSError as error:
        log.warning("%s: could not save %s (%s); the next load will convert again",
                    spec.name, path, error)
    else:
        log.info("%s: converted in %.1f s and saved to %s (%.1f MB)", spec.name,
                 time.monotonic() - start, path, path.stat().st_size / 1e6)
    return dataset
