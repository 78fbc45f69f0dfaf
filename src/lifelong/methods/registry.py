"""The named methods: ``METHODS.get(name)(model, seed=..., **params)``."""

from lifelong.params import Registry

METHODS = Registry("method", skip=("model", "seed"))
