"""lifelong: continual learning methods, benchmarks and metrics under one protocol."""

__version__ = "0.1.0"
