"""Sleep Replay Consolidation (SRC): Tadros, Krishnan, Ramyaa & Bazhenov, "Sleep-like unsupervised
replay reduces catastrophic forgetting in artificial neural networks", Nature Communications 13,
7742 (2022); official code tmtadros/SleepReplayConsolidation (MATLAB: ``sleep/sleepnn_old.m``,
``utils/normalize_nn_data.m``, ``utils/create_masked_input.m``, settings in
``MNIST/run_class_task_summary.m``).

Each task is learnt by plain SGD on its own data (as `finetune`); after it, the network "sleeps":

1. **Conversion** (Algorithm 1 of the paper; ``normalize_nn_data.m``). The ReLU MLP becomes a
   network of integrate-and-fire units with Heaviside output, one per ReLU (and per output unit),
   over the same weights ``W_l``. Data-based normalisation gives each layer a scale: with
   ``s_l = max(max_ij max(0, W_l), max over the task's training data of the layer's activation)``
   and ``p_0 = 1``, ``f_l = p_{l-1} / s_l`` and ``p_l = s_l / p_{l-1}`` (the code's recursion,
   which carries ``1 / f_l``, not ``s_l``, to the next layer); ``alpha_l = alpha_scale * f_l``.
2. **Noisy input** (``create_masked_input.m``). The sleep input is the mean training image of all
   tasks seen so far; at each time step one random ``patch_size`` x ``patch_size`` square of it is
   kept (zero elsewhere) and each pixel ``x`` spikes with probability ``2 dt input_rate x``
   (Bernoulli; the code's ``rand * 1 / (dt * max_rate) / 2 <= x``).
3. **Spiking dynamics** (``sleepnn_old.m``), for ``t = 1..T`` and each layer ``l``::

       v_l <- decay * v_l + alpha_l * W_l s_{l-1}
       s_l <- H(v_l - beta_l)              (Heaviside; the threshold 1.0 times beta_l)
       W_l[i, j] += inc * sigma(W_l[i, j])   where s_l[i] = 1 and s_{l-1}[j] = 1
       W_l[i, j] -= dec * sigma(W_l[i, j])   where s_l[i] = 1 and s_{l-1}[j] = 0
       v_l[s_l = 1] <- 0                   (reset)

   with the code's weight-dependent factor ``sigma(w) = 2 (1 - 1 / (1 + exp(-w / 0.001)))``: 1 at
   ``w = 0``, about 2 for negative and about 0 for positive weights beyond a few thousandths (the
   paper's text writes the update as ``inc`` / ``dec`` alone). The Hebbian update of layer ``l``
   happens right after its spikes, before layer ``l + 1`` integrates them. ``T = steps +
   t * steps_per_task`` after task ``t`` (0-based): the code's ``15000 + (ii - 1) * 15000 / 3``.
4. **Back to the ANN.** The weights the sleep changed are the ANN's own (the scale lives in
   ``alpha``; the code's optional ``normW`` rescaling is off in its MNIST settings). The MATLAB
   network uses non-inverted dropout (activations times ``1 - p`` at test time), PyTorch inverted
   dropout, so a layer that reads dropped-out activations holds ``(1 - p)`` times the code's
   weights: the sleep runs on ``W / (1 - p)`` (the code's scale, which its hyper-parameters were
   tuned for) and writes ``(1 - p)`` times the result back. Without dropout both scales agree.

Biases: the paper's network has none (``dlt_cnn_map_dropout_nobiasnn``). The library's ``mlp`` has
them (zero at initialisation); they train with SGD like every parameter, take part in the
normalisation's activations, but the spiking network has no bias current and sleep leaves them
unchanged.

Defaults: the code's MNIST settings (``run_class_task_summary.m``, the tuned vector ``x``):
``input_rate=239.515363`` (``max_rate``), ``inc=0.032064``, ``dec=0.003344``, ``beta=(14.548273,
44.560317, 38.046326)`` (one per weight layer: first hidden, second hidden, output; a network of
another depth uses the first value for the first hidden layer, the second for the others and the
last for the output), ``alpha_scale=55.882454``, ``decay=0.999``, ``dt=0.001``, ``steps=15000``,
``steps_per_task=5000``, ``patch_size=11`` (the code's ``mask_size=10`` over an inclusive range);
its Fashion-MNIST settings are ``input_rate=181.047258, inc=0.041001, dec=0.003344, beta=(40.446884,
27.596929, 33.109393), alpha_scale=31.592987``. The code's ``W_inh``, ``DC`` and ``t_ref`` are zero
and not implemented. ``lr=0.1`` is the code's learning rate (it adds momentum 0.5, dropout 0.25 and
an MSE loss on ReLU outputs; here plain SGD on the library's cross-entropy, as `finetune`).

Where this differs from the code, because a continual learner keeps no data: the normalisation's
maximum activations come from the current task's training data (the code uses every task seen so
far), and the sleep input is the running mean of the training images of the tasks seen so far (the
code's mean over their whole training sets) — that mean (one value per input and a count) is all
the method stores beyond the network. The HAT code (joansj/hat) has no sleep method.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn

from lifelong.benchmarks.stream import Task
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, NonNegative, Positive

#: the temperature of the code's weight-dependent factor ``2 (1 - 1 / (1 + exp(-w / 0.001)))``
SIGMOID_SCALE = 0.001
#: time steps of sleep input drawn at once (bounds the memory of the noise)
CHUNK = 1000


def plasticity_factor(weight: np.ndarray) -> np.ndarray:
    """The code's ``sigmoid(w) = 2 * (1 - 1 / (1 + exp(-w / 0.001)))``, i.e. ``2 / (1 + exp(w / 0.001))``."""
    with np.errstate(over="ignore"):
        return 2.0 / (1.0 + np.exp(weight / SIGMOID_SCALE))


def hebbian_update(weight: np.ndarray, pre: np.ndarray, post: np.ndarray, inc: float, dec: float) -> None:
    """The sleep's local rule on ``weight`` (``out x in``), in place, for one time step.

    Rows of post-synaptic units that spiked: ``+inc * sigma(w)`` from inputs that spiked,
    ``-dec * sigma(w)`` from inputs that did not; every other weight is left alone.
    """
    rows = np.flatnonzero(post)
    if rows.size == 0:
        return
    block = weight[rows]
    step = np.where(pre, inc, -dec)
    weight[rows] = block + step * plasticity_factor(block)


def normalisation_factors(weight_maxima: list[float], activation_maxima: list[float]) -> list[float]:
    """``normalize_nn_data.m``: per layer ``s_l = max(weight max, activation max)``, ``f_l = p / s_l``,
    then ``p <- s_l / p`` (starting from ``p = 1``)."""
    factors, previous = [], 1.0
    for weight_max, activation_max in zip(weight_maxima, activation_maxima, strict=True):
        scale = max(weight_max, activation_max, 0.0)
        if scale == 0.0:
            raise ValueError("sleep-replay: a layer has no positive weight and no positive activation "
                             "on the task's data, so it cannot be normalised (is the network trained?)")
        applied = scale / previous
        factors.append(1.0 / applied)
        previous = applied
    return factors


class SpikingNetwork:
    """The converted network: integrate-and-fire layers over ``weights`` (``out x in`` arrays, changed
    in place by the Hebbian rule), input scales ``alpha``, thresholds and membrane ``decay``."""

    def __init__(self, weights: list[np.ndarray], alpha: list[float], thresholds: list[float],
                 decay: float, inc: float, dec: float) -> None:
        self.weights, self.alpha, self.thresholds = weights, alpha, thresholds
        self.decay, self.inc, self.dec = decay, inc, dec
        self.membranes = [np.zeros(w.shape[0]) for w in weights]
        self.spike_counts = [0 for _ in weights]

    def step(self, input_spikes: np.ndarray) -> list[np.ndarray]:
        """One time step driven by the boolean ``input_spikes``; returns every layer's spikes."""
        pre = input_spikes
        spikes = []
        for layer, weight in enumerate(self.weights):
            active = np.flatnonzero(pre)
            impulse = self.alpha[layer] * weight[:, active].sum(axis=1)
            membrane = self.membranes[layer]
            membrane *= self.decay
            membrane += impulse
            post = membrane >= self.thresholds[layer]
            if self.inc or self.dec:
                hebbian_update(weight, pre, post, self.inc, self.dec)
            membrane[post] = 0.0
            self.spike_counts[layer] += int(post.sum())
            spikes.append(post)
            pre = post
        return spikes


def sleep_input_spikes(mean: np.ndarray, shape: tuple[int, ...], steps: int, patch_size: int,
                       probability_scale: float, generator: torch.Generator):
    """Boolean input spikes, ``(k, n_in)`` chunks for ``steps`` steps (``create_masked_input.m``).

    Each step keeps one random ``patch_size`` square of the mean image (over the last two dims;
    every channel) and spikes each pixel ``x`` of it when ``u / probability_scale <= x`` with
    ``u ~ U[0, 1)`` and ``x > 0``, i.e. with probability ``min(1, probability_scale * x)``.
    """
    height, width = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, shape[-1])
    channels = math.prod(shape) // (height * width)
    patch_h, patch_w = min(patch_size, height), min(patch_size, width)
    rows, cols = torch.arange(height), torch.arange(width)
    mean_t = torch.from_numpy(mean).view(channels, height, width)
    for start in range(0, steps, CHUNK):
        k = min(CHUNK, steps - start)
        top = torch.randint(0, height - patch_h + 1, (k, 1), generator=generator)
        left = torch.randint(0, width - patch_w + 1, (k, 1), generator=generator)
        noise = torch.rand(k, channels * height * width, generator=generator, dtype=torch.float64)
        in_rows = (rows >= top) & (rows < top + patch_h)
        in_cols = (cols >= left) & (cols < left + patch_w)
        window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        rates = (mean_t * window).reshape(k, -1)
        yield ((noise / probability_scale <= rates) & (rates > 0)).numpy()


@METHODS.register("sleep-replay")
class SleepReplay(Method):
    """SRC (Tadros et al. 2022): fine-tuning, then a spiking, Hebbian "sleep" after each task.

    The MLP runs as an integrate-and-fire network driven by noise from the mean input seen so far.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.1,
        inc: Annotated[float, NonNegative] = 0.032064,
        dec: Annotated[float, NonNegative] = 0.003344,
        beta: Annotated[tuple[float, ...], Positive] = (14.548273, 44.560317, 38.046326),
        alpha_scale: Annotated[float, Positive] = 55.882454,
        input_rate: Annotated[float, Positive] = 239.515363,
        dt: Annotated[float, Positive] = 0.001,
        decay: Annotated[float, NonNegative] = 0.999,
        steps: Annotated[int, NonNegative] = 15000,
        steps_per_task: Annotated[int, NonNegative] = 5000,
        patch_size: Annotated[int, AtLeastOne] = 11,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.inc = inc
        self.dec = dec
        self.beta = beta
        self.alpha_scale = alpha_scale
        self.input_rate = input_rate
        self.dt = dt
        self.decay = decay
        self.steps = steps
        self.steps_per_task = steps_per_task
        self.patch_size = patch_size
        self.generator: torch.Generator | None = None
        self.input_sum: torch.Tensor | None = None  # float64 sum of every training input seen
        self.input_count = 0
        self.last_sleep: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        self.spiking_layers()  # refuse other networks before any training
        if len(self.beta) == 0:
            raise ValueError("sleep-replay: beta needs at least one threshold")
        super().begin_task(task)
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def end_task(self, task: Task) -> None:
        x = task.x_train.reshape(len(task.x_train), -1).double()
        if self.input_sum is None:
            self.input_sum = torch.zeros(x.shape[1], dtype=torch.float64)
        self.input_sum += x.sum(0).cpu()
        self.input_count += len(x)
        self.sleep(task.x_train, self.steps + task.id * self.steps_per_task)

    # ----------------------------------------------------------------------------- sleep
    def spiking_layers(self) -> list[tuple[nn.Linear, float]]:
        """The weight layers in order, each with the dropout rate of the activations it reads.

        Only ``Network``s whose body is an ``nn.Sequential`` of ``Linear`` / ``ReLU`` (plus
        ``Flatten`` and ``Dropout``), each ``Linear`` followed by a ``ReLU``, and a linear head.
        """
        body, head = getattr(self.model, "body", None), getattr(self.model, "head", None)
        refusal = ("sleep-replay converts a ReLU MLP to a spiking network: it needs the 'mlp' model "
                   "(body: nn.Sequential of Linear/ReLU/Dropout, head: nn.Linear)")
        if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Linear):
            raise ValueError(f"{refusal}; got {type(self.model).__name__}")
        layers: list[tuple[nn.Linear, float]] = []
        dropout, expect_relu = 0.0, False
        for module in body:
            if isinstance(module, nn.Linear):
                if expect_relu:
                    raise ValueError(f"{refusal}; a Linear layer is not followed by a ReLU")
                layers.append((module, dropout))
                dropout, expect_relu = 0.0, True
            elif isinstance(module, nn.ReLU) and expect_relu:
                expect_relu = False
            elif isinstance(module, nn.Dropout) and not expect_relu:
                dropout = 1.0 - (1.0 - dropout) * (1.0 - module.p)
            elif not isinstance(module, (nn.Flatten, nn.Identity)):
                raise ValueError(f"{refusal}; its body has {type(module).__name__}")
        if expect_relu:
            raise ValueError(f"{refusal}; the last Linear layer of the body is not followed by a ReLU")
        layers.append((head, dropout))
        return layers

    def thresholds(self, n_layers: int) -> list[float]:
        """``beta`` per weight layer: the last value for the output layer, the others for the hidden
        layers in order (the last hidden value repeated for deeper networks)."""
        beta = list(self.beta)
        if n_layers == 1 or len(beta) == 1:
            return [beta[-1]] * (n_layers - 1) + [beta[-1]]
        hidden = beta[:-1]
        return [hidden[min(i, len(hidden) - 1)] for i in range(n_layers - 1)] + [beta[-1]]

    @torch.no_grad()
    def activation_maxima(self, layers: list[tuple[nn.Linear, float]], x: torch.Tensor) -> list[float]:
        """Each layer's largest activation on ``x`` (eval mode: ReLU for hidden layers, the raw
        outputs for the head; ``max(0, .)`` of them as in the code)."""
        device = layers[0][0].weight.device
        maxima = [0.0] * len(layers)
        for batch in x.reshape(len(x), -1).split(1000):
            a = batch.to(device=device, dtype=layers[0][0].weight.dtype)
            for i, (layer, _) in enumerate(layers):
                a = layer(a)
                if i < len(layers) - 1:
                    a = torch.relu(a)
                maxima[i] = max(maxima[i], float(a.max()))
        return maxima

    def sleep(self, x: torch.Tensor, steps: int) -> None:
        """Convert, sleep ``steps`` time steps on the stored mean input, write the weights back."""
        layers = self.spiking_layers()
        # the code's scale: weights of layers reading dropped-out activations divided by (1 - p)
        weights = [layer.weight.detach().cpu().double().numpy() / (1.0 - p) for layer, p in layers]
        factors = normalisation_factors([float(w.max()) for w in weights], self.activation_maxima(layers, x))
        alpha = [self.alpha_scale * f for f in factors]
        network = SpikingNetwork(weights, alpha, self.thresholds(len(layers)), self.decay, self.inc, self.dec)
        mean = (self.input_sum / self.input_count).numpy()
        shape = tuple(x.shape[1:])
        for chunk in sleep_input_spikes(mean, shape, steps, self.patch_size, 2.0 * self.dt * self.input_rate,
                                        self.generator):
            for input_spikes in chunk:
                network.step(input_spikes)
        with torch.no_grad():
            for (layer, p), weight in zip(layers, network.weights, strict=True):
                layer.weight.copy_(torch.from_numpy(weight * (1.0 - p)).to(layer.weight))
        self.last_sleep = {"sleep_steps": steps, "sleep_alpha": alpha,
                           "sleep_spike_rates": [c / (steps * w.shape[0]) if steps else 0.0
                                                 for c, w in zip(network.spike_counts, weights, strict=True)]}

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
            "input_sum": self.input_sum,
            "input_count": self.input_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        self.input_sum = None if state["input_sum"] is None else state["input_sum"].clone()
        self.input_count = state["input_count"]

    def memory(self) -> dict[str, int]:
        stored = 0 if self.input_sum is None else self.input_sum.numel()
        nbytes = 0 if self.input_sum is None else tensor_bytes(self.input_sum) + 8  # + the count
        return {**super().memory(), "input_statistics": stored, "input_statistics_bytes": nbytes}

    def report(self) -> dict[str, Any]:
        return dict(self.last_sleep)

    def __repr__(self) -> str:
        return (f"SleepReplay(lr={self.lr}, inc={self.inc}, dec={self.dec}, beta={self.beta}, "
                f"alpha_scale={self.alpha_scale}, input_rate={self.input_rate}, steps={self.steps})")
