"""The named benchmarks: ``BENCHMARKS.get(name)(**params) -> Stream``."""

from lifelong.params import Registry

BENCHMARKS = Registry("benchmark")
