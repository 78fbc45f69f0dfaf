"""Read and write IDX files (the MNIST file format), gzip-compressed or raw.

An IDX file is a 4-byte magic number ``00 00 TT DD`` (TT: element type, DD: number of
dimensions), then DD big-endian uint32 sizes, then the elements in C order, big-endian.
MNIST images use ``0x00000803`` (uint8, 3-d) and labels ``0x00000801`` (uint8, 1-d).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"

#: IDX element type code -> numpy dtype (big-endian as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file."""


def is_gzip(data: bytes) -> bool:
    """True if ``data`` starts with the gzip magic bytes."""
    return data[:2] == _GZIP_MAGIC


def decompress_if_gzip(data: bytes) -> bytes:
    """Return ``data`` gunzipped if it is gzip data, else unchanged."""
    return gzip.decompress(data) if is_gzip(data) else data


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian array of the stored shape.

    Raises :class:`IdxFormatError` naming ``source`` on a bad magic number or when the size of
    the data does not match the dimensions in the header.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{source}: bad IDX magic number 0x{magic:08x}; expected 0x0000TTDD with type TT "
            f"in {', '.join(f'{c:02x}' for c in IDX_DTYPES)} and DD >= 1 dimensions "
            "(MNIST images: 0x00000803, labels: 0x00000801)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{source}: truncated header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise IdxFormatError(f"{source}: header says shape {dims} ({expected} bytes) but the "
                             f"data has {len(data)} bytes")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping it first if it is gzip data (whatever its name)."""
    path = Path(path)
    return parse_idx(decompress_if_gzip(path.read_bytes()), source=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes (uncompressed) of ``array``; the inverse of :func:`parse_idx`."""
    array = np.asarray(array)
    code = next((c for c, d in IDX_DTYPES.items()
                 if d.kind == array.dtype.kind and d.itemsize == array.dtype.itemsize), None)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    dtype = IDX_DTYPES[code]
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()
