"""Progressive Neural Networks (PNN): Rusu et al., 2016, "Progressive Neural Networks"
(arXiv:1606.04671).

Task ``k`` gets a new *column*: a copy of the model's architecture (same layer types, kernels and
widths) with fresh weights. Earlier columns are frozen; the new column reads them through lateral
connections into every layer after the first, the head included:

- The progressive layer (``adapter="linear"``):
  ``h_i^(k) = f(W_i^(k) h_{i-1}^(k) + sum_{j<k} U_i^(k:j) h_{i-1}^(j))``, where ``U_i^(k:j)`` is a
  linear map of the same kind as ``W_i`` (a linear layer, or a convolution with ``W_i``'s kernel)
  from the layer-``i-1`` output of earlier column ``j``, and ``f`` is everything the body applies
  after the layer (ReLU, pooling, dropout). Implemented as one map on the concatenated earlier
  outputs, so ``U_i^(k:<k)`` holds ``k`` blocks shaped like ``W_i`` (without a bias).
- Adapters (``adapter="mlp"``, the paper's non-linear laterals): the sum is replaced by
  ``U_i^(k:<k) f(V_i^(k:<k) (alpha^(<k) h_{i-1}^(<k)))``: each earlier column's output is scaled
  by a learned scalar ``alpha_j`` (a small random value at first, as the paper: U(0, 0.1) here;
  the HAT code also keeps one scalar per earlier column), ``V`` (with a bias) projects the
  concatenation onto ``n_{i-1}`` dimensions, the width of one column's layer (a linear map, or a
  1x1 convolution for convolutional layers, as the paper) and ``U`` (no bias) is shaped like
  ``W_i``. As in the HAT code (joansj/hat, ``networks/alexnet_progressive.py``), the adapter into
  the output layer has no non-linearity.

With ``L`` layers of widths ``n_1..n_L``, input ``n_0`` and ``c_k`` output units, column ``k``
(from 0) holds ``sum_i (n_{i-1} n_i + n_i) + n_L c_k + c_k`` own parameters plus
``k (sum_{i>=2} n_{i-1} n_i + n_L c_k)`` lateral ones (linear laterals; convolutions count kernel
areas and flattened inputs their spatial size), so the network grows quadratically in the number
of tasks.

Each column's head covers its own task's output units (all units in the domain scenario), and
task ``k`` is predicted by column ``k``; tasks not trained yet are answered by the untrained model
given to the method. The body must be ``nn.Linear``/``nn.Conv2d`` layers separated by
parameter-free modules (the library's ``mlp`` and ``conv`` models); weights are drawn
Xavier-uniform (biases zero, as the models) from a generator seeded with ``seed``.

Defaults: columns as wide as the model (``width_scale=1``, the paper: every column is a full
network). The HAT code shrinks columns to ``int(1.117 * width / n_tasks)`` so that all columns
together hold about the parameters of one network (``width_scale=1.117 / n_tasks`` here) and
always uses adapters (with a bias on ``U`` as well). Linear laterals are the default because they
are the paper's definition of the model; ``adapter="mlp"`` gives the HAT code's. Plain SGD at
``lr=0.05``, the HAT code's learning rate (its validation-driven learning-rate decay and gradient
clipping at 10000 are not used).
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method
from lifelong.methods.registry import METHODS
from lifelong.models.network import xavier_
from lifelong.params import Positive

SUPPORTED = ("nn.Linear and nn.Conv2d layers separated by parameter-free modules "
             "(ReLU, pooling, dropout, flatten), like the mlp and conv models")


class Stage:
    """One layer of the model's body, the parameter-free modules after it, and its input's area."""

    def __init__(self, layer: nn.Module, area: int) -> None:
        self.layer = layer
        self.after: list[nn.Module] = []
        self.area = area  # flattened inputs: features per channel of the previous layer

    @property
    def width(self) -> int:
        return self.layer.out_features if isinstance(self.layer, nn.Linear) else self.layer.out_channels


def split_body(body: nn.Module, method: str) -> tuple[list[nn.Module], list[Stage]]:
    """The modules before the first layer and the body's layers as `Stage`s (else a ValueError)."""
    children = list(body.children()) if isinstance(body, nn.Sequential) else [body]
    before: list[nn.Module] = []
    stages: list[Stage] = []
    for module in children:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ValueError(f"{method} supports bodies of {SUPPORTED}; got a grouped Conv2d")
            inputs = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            area = 1
            if stages:
                area, rest = divmod(inputs, stages[-1].width)
                if rest or area < 1:
                    raise ValueError(f"{method}: {module} does not read whole outputs of {stages[-1].layer}")
            stages.append(Stage(module, area))
        elif any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            raise ValueError(f"{method} supports bodies of {SUPPORTED}; got {type(module).__name__}")
        else:
            (stages[-1].after if stages else before).append(copy.deepcopy(module))
    if not stages:
        raise ValueError(f"{method} supports bodies of {SUPPORTED}; the body has no layer")
    return before, stages


def make_layer(template: nn.Module, inputs: int, outputs: int, bias: bool = True) -> nn.Module:
    """A layer like ``template`` (linear, or a convolution with its kernel) of the given widths."""
    if isinstance(template, nn.Linear):
        return nn.Linear(inputs, outputs, bias=bias)
    return nn.Conv2d(inputs, outputs, template.kernel_size, template.stride, template.padding,
                     template.dilation, bias=bias, padding_mode=template.padding_mode)


class Lateral(nn.Module):
    """The connections from layer ``i-1`` of ``n_previous`` earlier columns into one layer."""

    def __init__(self, template: nn.Module, n_previous: int, inputs: int, outputs: int,
                 adapter: str, nonlinear: bool) -> None:
        super().__init__()
        self.nonlinear = nonlinear
        if adapter == "mlp":
            self.alpha = nn.Parameter(torch.zeros(n_previous))
            if isinstance(template, nn.Linear):
                self.reduce = nn.Linear(n_previous * inputs, inputs)
            else:
                self.reduce = nn.Conv2d(n_previous * inputs, inputs, kernel_size=1)
            self.project = make_layer(template, inputs, outputs, bias=False)
        else:
            self.alpha, self.reduce = None, None
            self.project = make_layer(template, n_previous * inputs, outputs, bias=False)

    def forward(self, previous: list[torch.Tensor]) -> torch.Tensor:
        if self.reduce is None:
            return self.project(torch.cat(previous, 1))
        scaled = self.reduce(torch.cat([a * h for a, h in zip(self.alpha, previous, strict=True)], 1))
        return self.project(F.relu(scaled) if self.nonlinear else scaled)


class Column(nn.Module):
    """Column ``index``: its own layers and head, and laterals from the ``index`` earlier columns."""

    def __init__(self, stages: list[Stage], inputs: int, widths: list[int], head_area: int,
                 n_units: int, index: int, adapter: str) -> None:
        super().__init__()
        sizes = [inputs, *widths]
        self.layers = nn.ModuleList(
            make_layer(stage.layer, sizes[i] * stage.area, sizes[i + 1]) for i, stage in enumerate(stages)
        )
        self.head = nn.Linear(widths[-1] * head_area, n_units)
        self.laterals = nn.ModuleList()
        if index > 0:
            for i in range(1, len(stages)):
                self.laterals.append(Lateral(stages[i].layer, index, sizes[i] * stages[i].area,
                                             sizes[i + 1], adapter, nonlinear=True))
            self.laterals.append(Lateral(self.head, index, widths[-1] * head_area, n_units,
                                         adapter, nonlinear=False))


class ProgressiveNetwork(nn.Module):
    """The columns, and the parameter-free modules of the body they share."""

    def __init__(self, before: list[nn.Module], stages: list[Stage]) -> None:
        super().__init__()
        self.before = nn.Sequential(*before)
        self.after = nn.ModuleList(nn.Sequential(*stage.after) for stage in stages)
        self.columns = nn.ModuleList()

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Column ``task``'s output (its task's units), computing columns ``0..task`` layer by layer."""
        columns = self.columns[: task + 1]
        hidden = [self.before(x)] * len(columns)
        for i, after in enumerate(self.after):
            hidden = [
                after(column.layers[i](hidden[k]) + (column.laterals[i - 1](hidden[:k]) if k and i else 0))
                for k, column in enumerate(columns)
            ]
        column = columns[task]
        out = column.head(hidden[task])
        return out + column.laterals[-1](hidden[:task]) if task else out


@METHODS.register("pnn")
class ProgressiveNets(Method):
    """Progressive neural networks: a new column per task, laterals from the frozen earlier ones."""

    task_conditioned = True
    task_agnostic = False

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.05,
        adapter: Literal["linear", "mlp"] = "linear",
        width_scale: Annotated[float, Positive] = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.adapter = adapter
        self.width_scale = width_scale
        self.net: ProgressiveNetwork | None = None
        self.units: list[list[int]] = []  # the output units of each column's task
        self.n_units = 0
        self.generator: torch.Generator | None = None

    # ----------------------------------------------------------------------------- structure
    def build(self) -> None:
        before, self.stages = split_body(self.model.body, "pnn")
        first = self.stages[0].layer
        self.inputs = first.in_features if isinstance(first, nn.Linear) else first.in_channels
        self.widths = [max(1, int(stage.width * self.width_scale)) for stage in self.stages]
        self.head_area = self.model.head.in_features // self.stages[-1].width
        self.net = ProgressiveNetwork(before, self.stages).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def add_column(self, units: list[int]) -> None:
        column = Column(self.stages, self.inputs, self.widths, self.head_area, len(units),
                        len(self.net.columns), self.adapter)
        xavier_(column, self.generator)
        for lateral in column.laterals:
            if lateral.alpha is not None:
                lateral.alpha.data.uniform_(0.0, 0.1, generator=self.generator)
        self.net.columns.append(column.to(self.device))
        self.units.append(list(units))

    def train_only(self, index: int) -> None:
        """Freeze every column except ``index`` and optimise that one."""
        for k, column in enumerate(self.net.columns):
            column.requires_grad_(k == index)
        self.optimizer = self.make_optimizer(self.net.columns[index].parameters())

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        if task.layout.scenario == "class":
            raise ValueError("pnn needs the task id at test time, which the class-incremental "
                             "scenario does not give; use scenario=task or scenario=domain")
        if self.net is None:
            self.generator = torch.Generator().manual_seed(self.seed)
            self.build()
        self.n_units = task.layout.n_units
        while len(self.net.columns) <= task.id:
            self.add_column(task.layout.task_units[len(self.net.columns)])
        self.train_only(task.id)
        super().begin_task(task)

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Column ``task``'s outputs placed at its task's units (zeros elsewhere)."""
        out = self.net(x, task)
        logits = out.new_zeros(len(x), self.n_units)
        logits[:, self.units[task]] = out
        return logits

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        loss = self.loss(self.logits(x, task_id), y)
        self.step(loss)
        return loss.detach()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError("pnn needs the task id to choose a column")
        if self.net is None or task_id >= len(self.net.columns):
            return self.model(x)  # a task not trained yet: the untrained model
        return self.logits(x, task_id)

    def networks(self) -> list[nn.Module]:
        return [self.model] + ([self.net] if self.net is not None else [])

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["units"] = [list(u) for u in self.units]
        state["n_units"] = self.n_units
        state["net"] = None if self.net is None else self.net.state_dict()
        state["generator"] = None if self.generator is None else self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.task_id, self.n_units = state["task_id"], state["n_units"]
        self.net, self.units, self.optimizer = None, [], None
        if state["net"] is None:
            return
        self.generator = torch.Generator()
        self.build()
        for units in state["units"]:
            self.add_column(units)
        self.net.load_state_dict(state["net"])
        self.generator.set_state(state["generator"])
        self.train_only(self.task_id)
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def memory(self) -> dict[str, int]:
        if self.net is None:
            return {"parameters": 0, "parameter_bytes": 0, "lateral_parameters": 0}
        laterals = [p for column in self.net.columns for p in column.laterals.parameters()]
        params = list(self.net.parameters())
        return {
            "parameters": sum(p.numel() for p in params),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
            "lateral_parameters": sum(p.numel() for p in laterals),
        }

    def __repr__(self) -> str:
        return f"ProgressiveNets(lr={self.lr}, adapter={self.adapter!r}, width_scale={self.width_scale})"
