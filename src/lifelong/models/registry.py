"""The named model builders: ``MODELS.get(name)(input_shape, n_units, seed=..., **params)``."""

from lifelong.params import Registry

MODELS = Registry("model", skip=("input_shape", "n_units", "seed"))
