"""Fashion-MNIST: 60,000 training and 10,000 test 28x28 uint8 images of 10 clothing classes.

Sources, tried in order after the converted ``<root>/fashion-mnist.npz``:

1. the four IDX files placed by the user in ``<root>/fashion-mnist-idx/``;
2. the installed Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. if ``apt-get`` exists: ``apt-get download dataset-fashion-mnist`` into ``<root>/downloads``
   and ``dpkg -x`` into a temp directory (no root needed, nothing installed);
4. HTTP(S) mirrors of the canonical files (``$LIFELONG_FASHION_MNIST_MIRRORS``, comma-separated
   base URLs, empty disables HTTP; else :data:`DEFAULT_MIRRORS`), kept in
   ``<root>/downloads/fashion-mnist/``.

Every IDX file is sha256-checked whatever its source. The Debian package's ``.gz`` files are
not byte-identical to the canonical downloads: each is exactly ``len(name) + 1`` bytes shorter,
i.e. its gzip header lacks the embedded file name (the package normalises gzip headers). They
gunzip to the canonical uncompressed files, whose published sha256 are also in the table.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from lifelong.data.dataset import DatasetSpec, SourceUnavailable, Splits, first_working_source
from lifelong.data.debian import apt_download, extract_deb
from lifelong.data.download import DEFAULT_TIMEOUT, mirrors_from_env
from lifelong.data.idx_files import GZ_NAMES, load_idx_dir, load_idx_mirrors

NAME = "fashion-mnist"
N_TRAIN, N_TEST, IMAGE_SHAPE = 60_000, 10_000, (28, 28)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")

#: sha256 per file. ``.gz``: first the canonical download (TensorFlow Datasets'
#: url_checksums/fashion_mnist.txt), then the Debian package dataset-fashion-mnist
#: 0.0~git20200523.55506a9-1. Uncompressed: the Debian files gunzipped, equal to the
#: uncompressed hashes other projects publish for the canonical files.
SHA256: dict[str, tuple[str, ...]] = {
    "train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    "train-images-idx3-ubyte":
        ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",),
    "train-labels-idx1-ubyte":
        ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",),
    "t10k-images-idx3-ubyte":
        ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",),
    "t10k-labels-idx1-ubyte":
        ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",),
}

#: The publisher's download site, then the files in the project's git repository.
DEFAULT_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
MIRRORS_ENV = "LIFELONG_FASHION_MNIST_MIRRORS"

DEBIAN_PACKAGE = "dataset-fashion-mnist"
#: Where the Debian package installs the four .gz files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_from_deb(downloads: Path, checksums: Mapping[str, Collection[str]]) -> Splits:
    """``apt-get download`` the Debian package (cached in ``downloads``), unpack it, load it."""
    deb = apt_download(DEBIAN_PACKAGE, downloads)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".deb-extract-") as tmp:
        extract_deb(deb, Path(tmp))
        unpacked = Path(tmp) / DEBIAN_DIR.relative_to("/")
        if not unpacked.is_dir():
            raise SourceUnavailable(f"{deb.name} has no {DEBIAN_DIR}")
        return load_idx_dir(unpacked, checksums, N_TRAIN, N_TEST, IMAGE_SHAPE)


def build(root: Path, *, downloads: Path | None = None, mirrors: Sequence[str] | None = None,
          checksums: Mapping[str, Collection[str]] | None = None,
          system_dir: Path | None = DEBIAN_DIR, use_apt: bool = True,
          timeout: float = DEFAULT_TIMEOUT) -> Splits:
    """Build Fashion-MNIST from the first source that works (see the module docstring).

    Args:
        root: the data directory (``<root>/fashion-mnist-idx`` is searched).
        downloads: where downloads are kept; default ``<root>/downloads``.
        mirrors: HTTP base URLs; default ``$LIFELONG_FASHION_MNIST_MIRRORS`` or
            :data:`DEFAULT_MIRRORS`.
        checksums: the sha256 table (file name -> accepted hashes); default :data:`SHA256`.
        system_dir: the installed Debian package's directory; ``None`` skips it.
        use_apt: whether to try ``apt-get download`` + ``dpkg -x``.
        timeout: HTTP connect/read timeout in seconds.

    Raises:
        DatasetUnavailableError: naming every source tried and why it failed.
    """
    root = Path(root)
    downloads = Path(downloads) if downloads is not None else root / "downloads"
    mirrors = tuple(mirrors) if mirrors is not None else mirrors_from_env(MIRRORS_ENV,
                                                                          DEFAULT_MIRRORS)
    table = SHA256 if checksums is None else checksums
    local_dir, http_dir = root / "fashion-mnist-idx", downloads / NAME
    shape = (N_TRAIN, N_TEST, IMAGE_SHAPE)
    sources = [(f"IDX files in {local_dir}", lambda: load_idx_dir(local_dir, table, *shape))]
    if system_dir is not None:
        sources.append((f"the installed Debian package {DEBIAN_PACKAGE} ({system_dir})",
                        lambda: load_idx_dir(Path(system_dir), table, *shape)))
    if use_apt:
        sources.append((f"apt-get download {DEBIAN_PACKAGE} into {downloads}",
                        lambda: load_from_deb(downloads, table)))
    sources.append((f"HTTP mirrors ({', '.join(mirrors) or 'none configured'})",
                    lambda: load_idx_mirrors(mirrors, http_dir, table, *shape, timeout=timeout)))
    how = (f"install the Debian package {DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}), "
           f"or go online, or put the IDX files {', '.join(GZ_NAMES)} in {local_dir}. "
           f"Set ${MIRRORS_ENV} to use other mirrors.")
    return first_working_source(NAME, sources, how)


SPEC = DatasetSpec(NAME, build, N_TRAIN, N_TEST, IMAGE_SHAPE, pixel_max=255,
                   class_names=CLASS_NAMES)
