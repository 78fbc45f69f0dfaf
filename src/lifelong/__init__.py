"""lifelong: continual learning methods, benchmarks and metrics under one protocol.

>>> import lifelong
>>> stream = lifelong.make_stream("split-digits")                        # doctest: +SKIP
>>> model = lifelong.make_model("mlp", stream.input_shape, stream.n_units)  # doctest: +SKIP
>>> result = lifelong.run(lifelong.make_method("finetune", model), stream)   # doctest: +SKIP
>>> result.metrics                                                           # doctest: +SKIP
"""

__version__ = "0.1.0"

from lifelong import metrics  # noqa: E402
from lifelong.benchmarks import Stream, Task, make_stream  # noqa: E402
from lifelong.engine import Result, run  # noqa: E402
from lifelong.methods import Method, make_method  # noqa: E402
from lifelong.models import make_model  # noqa: E402

__all__ = ["Method", "Result", "Stream", "Task", "make_method", "make_model", "make_stream",
           "metrics", "run"]
