"""The IDX reader/writer and the four-file IDX layout (checksums, gz or raw files)."""

import gzip
import hashlib

import numpy as np
import pytest

from lifelong.data.cache import ChecksumError
from lifelong.data.dataset import SourceUnavailable
from lifelong.data.idx import IdxFormatError, encode_idx, parse_idx, read_idx
from lifelong.data.idx_files import IDX_NAMES, load_idx_dir, verified_idx_bytes


def test_round_trip_uint8_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    data = encode_idx(images)
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == (7).to_bytes(4, "big") + (5).to_bytes(4, "big") + (4).to_bytes(4, "big")
    np.testing.assert_array_equal(parse_idx(data), images)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(encode_idx(labels)))
    parsed = read_idx(path)
    assert parsed.dtype == np.uint8 and parsed.shape == (7,)
    np.testing.assert_array_equal(parsed, labels)


def test_round_trip_multibyte_types_come_back_native_endian():
    values = np.array([[1.5, -2.25], [1e30, 0.0]], dtype=np.float32)
    parsed = parse_idx(encode_idx(values))
    assert parsed.dtype == np.dtype(np.float32) and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, values)
    ints = np.array([-70000, 5, 2**31 - 1], dtype=np.int32)
    np.testing.assert_array_equal(parse_idx(encode_idx(ints)), ints)
    assert parse_idx(encode_idx(ints)).flags.writeable


def test_bad_magic_number_is_a_clear_error():
    data = bytearray(encode_idx(np.zeros((2, 3, 3), np.uint8)))
    data[0] = 0x12
    with pytest.raises(IdxFormatError, match=r"bad IDX magic number 0x12000803.*0x00000803"):
        parse_idx(bytes(data), source="x.idx")
    data[0], data[2] = 0, 0x07  # unknown type code
    with pytest.raises(IdxFormatError, match="x.idx: bad IDX magic number 0x00000703"):
        parse_idx(bytes(data), source="x.idx")


def test_size_mismatch_and_short_data_are_errors():
    data = encode_idx(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(IdxFormatError, match=r"header says shape \(2, 3, 3\) \(34 bytes\).*33"):
        parse_idx(data[:-1])
    with pytest.raises(IdxFormatError, match="too short"):
        parse_idx(b"\x00\x00")
    with pytest.raises(IdxFormatError, match="truncated header"):
        parse_idx(data[:9])


def _write_set(directory, gz=True):
    """Four small IDX files in ``directory``; returns (arrays, checksum table)."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(6, dtype=np.uint8) % 3,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([2, 0, 1], dtype=np.uint8),
    }
    table = {}
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = encode_idx(array)
        table[name] = (hashlib.sha256(raw).hexdigest(),)
        blob = gzip.compress(raw, mtime=0)
        table[f"{name}.gz"] = (hashlib.sha256(blob).hexdigest(),)
        (directory / (f"{name}.gz" if gz else name)).write_bytes(blob if gz else raw)
    return arrays, table


def test_idx_dir_loads_gz_or_raw_files_and_converts_labels(tmp_path):
    for gz in (True, False):
        arrays, table = _write_set(tmp_path / str(gz), gz=gz)
        splits = load_idx_dir(tmp_path / str(gz), table, 6, 3, (4, 4))
        np.testing.assert_array_equal(splits.x_train, arrays["train-images-idx3-ubyte"])
        np.testing.assert_array_equal(splits.y_test, [2, 0, 1])
        assert splits.y_train.dtype == np.int64 and splits.x_test.dtype == np.uint8


def test_recompressed_copy_passes_by_its_uncompressed_hash(tmp_path):
    arrays, table = _write_set(tmp_path)
    name = IDX_NAMES[0]
    path = tmp_path / f"{name}.gz"
    path.write_bytes(gzip.compress(encode_idx(arrays[name]), compresslevel=1, mtime=12345))
    assert hashlib.sha256(path.read_bytes()).hexdigest() not in table[f"{name}.gz"]
    assert verified_idx_bytes(path, name, table) == encode_idx(arrays[name])


def test_idx_dir_rejects_wrong_checksum_missing_files_and_wrong_shapes(tmp_path):
    arrays, table = _write_set(tmp_path)
    with pytest.raises(ValueError, match=r"expected uint8 \(5, 4, 4\)"):
        load_idx_dir(tmp_path, table, 5, 3, (4, 4))
    bad = dict(table, **{"t10k-labels-idx1-ubyte.gz": ("0" * 64,),
                         "t10k-labels-idx1-ubyte": ("1" * 64,)})
    with pytest.raises(ChecksumError, match=r"t10k-labels-idx1-ubyte.gz: sha256 [0-9a-f]{64} "
                                            r"does not match the expected 0{64}"):
        load_idx_dir(tmp_path, bad, 6, 3, (4, 4))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SourceUnavailable, match="missing train-labels-idx1-ubyte.gz in"):
        load_idx_dir(tmp_path, table, 6, 3, (4, 4))
    with pytest.raises(SourceUnavailable, match="does not exist"):
        load_idx_dir(tmp_path / "nope", table, 6, 3, (4, 4))
