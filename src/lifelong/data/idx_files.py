"""The four-file IDX layout shared by MNIST and Fashion-MNIST: find, verify and parse it.

A checksum table maps a file name to the sha256 values accepted for it: the ``.gz`` name to
the hashes of the compressed files (several gzip encodings of the same data exist, e.g. the
canonical download and the Debian package), the bare name to the hash of the uncompressed IDX
bytes. A file passes if its own hash is accepted, or if its content, gunzipped, has the accepted
uncompressed hash (so a user's own gunzipped or re-gzipped copy of the canonical data passes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from lifelong.data.cache import ChecksumError, sha256_bytes
from lifelong.data.dataset import SourceUnavailable, Splits
from lifelong.data.download import DEFAULT_TIMEOUT, fetch_files
from lifelong.data.idx import decompress_if_gzip, is_gzip, parse_idx

#: The canonical file names, without ``.gz``, in the order of :class:`Splits`.
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
GZ_NAMES = tuple(f"{name}.gz" for name in IDX_NAMES)


def verified_idx_bytes(path: Path, name: str,
                       checksums: Mapping[str, Collection[str]]) -> bytes:
    """Read ``path`` (the IDX file ``name``, gzipped or not) and return its uncompressed bytes.

    Raises :class:`~lifelong.data.cache.ChecksumError` unless the file matches ``checksums``
    as described in the module docstring.
    """
    data = Path(path).read_bytes()
    gz_ok, raw_ok = checksums.get(f"{name}.gz", ()), checksums.get(name, ())
    digest = sha256_bytes(data)
    if is_gzip(data):
        payload = decompress_if_gzip(data)
        if digest in gz_ok or sha256_bytes(payload) in raw_ok:
            return payload
        raise ChecksumError(f"{path}", digest, gz_ok)
    if digest in raw_ok:
        return data
    raise ChecksumError(f"{path}", digest, raw_ok)


def splits_from_idx(payloads: Mapping[str, bytes], sources: Mapping[str, str],
                    n_train: int, n_test: int, image_shape: tuple[int, int]) -> Splits:
    """Parse the four uncompressed IDX payloads (keyed by :data:`IDX_NAMES`) into Splits."""
    arrays = []
    for name, n in zip(IDX_NAMES, (n_train, n_train, n_test, n_test), strict=True):
        array = parse_idx(payloads[name], source=sources[name])
        want = (n, *image_shape) if "images" in name else (n,)
        if array.shape != want or array.dtype != np.uint8:
            raise ValueError(f"{sources[name]}: holds {array.dtype} {array.shape}, expected "
                             f"uint8 {want}")
        arrays.append(array if "images" in name else array.astype(np.int64))
    return Splits(*arrays)


def find_idx_files(directory: Path) -> dict[str, Path]:
    """Map each IDX name to ``directory/<name>.gz`` or, failing that, ``directory/<name>``.

    Raises :class:`SourceUnavailable` naming the missing files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceUnavailable(f"{directory} does not exist")
    found, missing = {}, []
    for name in IDX_NAMES:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(f"{name}.gz")
    if missing:
        raise SourceUnavailable(f"missing {', '.join(missing)} in {directory}")
    return found


def load_idx_files(paths: Mapping[str, Path], checksums: Mapping[str, Collection[str]],
                   n_train: int, n_test: int, image_shape: tuple[int, int]) -> Splits:
    """Verify and parse the four IDX files at ``paths`` (keyed by :data:`IDX_NAMES`)."""
    payloads = {name: verified_idx_bytes(paths[name], name, checksums) for name in IDX_NAMES}
    return splits_from_idx(payloads, {n: str(p) for n, p in paths.items()},
                           n_train, n_test, image_shape)


def load_idx_dir(directory: Path, checksums: Mapping[str, Collection[str]],
                 n_train: int, n_test: int, image_shape: tuple[int, int]) -> Splits:
    """Load the four IDX files from ``directory`` (``.gz`` or uncompressed)."""
    return load_idx_files(find_idx_files(directory), checksums, n_train, n_test, image_shape)


def load_idx_mirrors(mirrors: tuple[str, ...], dest_dir: Path,
                     checksums: Mapping[str, Collection[str]], n_train: int, n_test: int,
                     image_shape: tuple[int, int], timeout: float = DEFAULT_TIMEOUT) -> Splits:
    """Download the four ``.gz`` files into ``dest_dir`` (reusing good ones there) and load them."""
    fetched = fetch_files(GZ_NAMES, mirrors, dest_dir, checksums, timeout=timeout)
    paths = {name: fetched[f"{name}.gz"] for name in IDX_NAMES}
    return load_idx_files(paths, checksums, n_train, n_test, image_shape)
