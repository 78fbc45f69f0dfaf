"""Task streams built on real data: permuted / rotated / split MNIST, split Fashion-MNIST, digits,
the mixture of MNIST, Fashion-MNIST and digits (one task per dataset), and the text streams
(``20news``: 10 tasks of 2 newsgroups; ``tweet-domains``: 6 sentiment domains) of token ids."""

from lifelong.benchmarks import mixture, permuted, rotated, split, text  # noqa: F401  (registers the benchmarks)
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import (
    SCENARIOS,
    HeadLayout,
    Stream,
    Task,
    build_stream,
    mask_logits,
)


def make_stream(name: str, **params) -> Stream:
    """Build benchmark ``name`` with ``params`` (validated; see ``lifelong list``)."""
    return BENCHMARKS.get(name)(**BENCHMARKS.resolve(name, params))


__all__ = ["BENCHMARKS", "SCENARIOS", "HeadLayout", "Stream", "Task", "build_stream",
           "make_stream", "mask_logits"]
