"""REMIND (latent replay of quantised features): Hayes, Kafle, Shrestha, Acharya & Kanan, "REMIND
Your Neural Network to Prevent Catastrophic Forgetting", ECCV 2020 (Sec. 3); official code
tyler-hayes/REMIND (``image_classification_experiments/REMINDModel.py``,
``imagenet_base_initialization.py``, ``imagenet_experiment.py``, ``run_imagenet_experiment.sh``).

The network ``y = F(G(x))`` is cut after body module ``split``: ``G = body[:split]`` (the paper:
ResNet-18 up to ``layer4.0``, a 7x7x512 map) and ``F = body[split:]`` plus the head.

1. **Base initialisation.** During the first ``base_tasks`` tasks the whole network trains by SGD
   on the task's loss (the paper trains offline on its base classes). The examples the method sees
   in the first epoch of those tasks are kept until the end of the last base task; then ``G`` is
   frozen for good (no gradient, always in eval mode), a product quantiser
   (`lifelong.methods.product_quantizer`) is fitted on ``G``'s features of those examples, and the
   examples are encoded into the memory; the raw examples are dropped.
2. **Codes.** ``G(x)`` of shape ``(C, H, W)`` is ``H W`` vectors of ``C`` channels (one vector of
   ``D`` values on the ``mlp``); each vector is cut into ``pq_subvectors`` (``m``) sub-vectors, each
   stored as one byte, the index of its nearest centroid in a codebook of ``codebook_size``
   centroids (the code: ``faiss.ProductQuantizer(512, 32, 8)``). An example costs ``H W m`` bytes.
3. **Streaming.** After the base tasks every minibatch ``B`` of new examples is quantised and
   reconstructed, ``G(x) -> codes -> decode`` (F learns on reconstructions, as in the code), and
   joined by ``replay_ratio * |B|`` distinct stored examples drawn uniformly and decoded (the code:
   50 per new example, one new example per step). ``F`` takes one SGD step on the mean
   cross-entropy of the union (each stored example over its ``layout.replay_mask``, as `replay`);
   then the new examples' codes are stored. Predictions quantise too: ``F(decode(encode(G(x))))``
   (the code's ``predict``).
4. **Memory.** Codes, labels (output units) and task ids of every example seen, up to
   ``memory_bytes // (H W m)`` examples; beyond, each new example is added and then one stored
   example of the label with the most stored examples is removed at random (possibly the new one),
   as the code's ``max_buffer_size`` rule (ties: the lowest unit). The budget counts code bytes
   only, like the paper's; `memory` also reports codebook and label bytes.
5. **Augmentation** (the code's ImageNet run script turns both on). ``random_crops``: every reconstructed
   map (new and replayed) gets a random resized crop back to ``H x W`` (area 2/7 to 1 of the map,
   aspect 3/4 to 4/3, bilinear; the code's ``RandomResizeCrop(7, scale=(2/7, 1))``); features
   without a spatial map are left as they are. ``mixup_alpha > 0``: manifold mixup among the
   replayed examples as in the code: ``2 r`` are drawn, the second half mixed into the first with
   one ``lambda ~ Beta(alpha, alpha)`` per step, loss ``lambda CE(y_a) + (1 - lambda) CE(y_b)``;
   new examples are not mixed.

Defaults and where they come from:

- ``momentum=0.9``, ``weight_decay=1e-5``: the code's SGD. ``lr=0.01`` (ours): the code starts at
  0.1, but its base network was trained offline beforehand; here the base task trains the whole
  network from scratch with this optimizer at minibatches of 10, where 0.1 with momentum 0.9
  diverges (split MNIST, ``conv``: 0.46 accuracy on the first two digits), while 0.01 (a
  steady-state step of 0.1, the code's nominal rate) learns them (0.996). The code also decays each
  class's rate by 100 over its examples (``step_lr_per_class``, 0.1 to 0.001); here the rate is
  constant (a run's validation schedule can decay it). The streaming phase starts a fresh optimizer
  over ``F``'s parameters, as the code builds one for ``F`` after the base initialisation.
- ``replay_ratio=50``: the code's ``rehearsal_samples`` per new example.
- ``pq_subvectors=2``, ``codebook_size=256``: the code's codebooks of 256 centroids over 16
  channels (32 codebooks for ResNet-18's 512); the library's ``conv`` has 32 channels after its
  first block, so 2 codebooks of 16 channels (on the ``mlp``, 2 halves of the first hidden layer).
- ``split=3``: after the first ``conv`` block (3x3 conv, ReLU, 2x2 max-pool: a 32 x 14 x 14 map on
  28 x 28 images, so crops apply), the ``mlp``'s first hidden layer (Flatten, Linear, ReLU).
- ``memory_bytes=78400``: the paper's budget is the bytes of 10,000 raw ImageNet images (10 per
  class; the code's 959,665 codes of 7 x 7 x 32 bytes, 1.5 GB); the same 10 raw images per class of
  10 classes of 28 x 28 uint8 images are 78,400 bytes (200 examples of the default ``conv`` codes).
- ``base_tasks=1``: the first task is the base (the paper: 100 of ImageNet's 1000 classes).
- ``mixup_alpha=0.1``, ``random_crops=True``: the code's ImageNet run script (``--use_mixup
  --mixup_alpha .1`` and its random-resized-crops flag; the class's own default alpha is 0.2).
- ``pq_iters=25``: faiss's k-means iterations (the code uses faiss's defaults).

Base tasks after the first train like `finetune` (no replay): their examples are kept and encoded
with the first one's, so ``F`` replays them once streaming starts. The HAT code (joansj/hat,
``src/approaches/``) has no REMIND and no replay method; its nearest relative is ``sgd_frozen``
(`frozen` here: the body frozen after the first task, the head trained alone, nothing replayed).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.benchmarks.stream import Task, mask_logits
from lifelong.methods.base import Method, tensor_bytes
from lifelong.methods.product_quantizer import MAX_POINTS_PER_CENTROID, ProductQuantizer
from lifelong.methods.registry import METHODS
from lifelong.params import AtLeastOne, NonNegative, Positive, Range

#: the code's RandomResizeCrop(7, scale=(2/7, 1.0)) with torchvision's default aspect ratios
CROP_SCALE = (2.0 / 7.0, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
#: examples passed through G at once when the base tasks are encoded
ENCODE_CHUNK = 1024


def raw_examples_for_budget(memory_bytes: int, example_shape: tuple[int, ...] | list[int],
                            bytes_per_value: int = 1) -> int:
    """How many raw examples of ``example_shape`` (``bytes_per_value`` each value: 1 for uint8
    images) fit in ``memory_bytes``: the raw-replay memory with REMIND's byte budget."""
    values = math.prod(example_shape)
    if memory_bytes < 0 or values < 1 or bytes_per_value < 1:
        raise ValueError(f"memory_bytes={memory_bytes}, example_shape={tuple(example_shape)}, "
                         f"bytes_per_value={bytes_per_value}: need a non-negative budget and a "
                         "non-empty example of at least one byte per value")
    return memory_bytes // (values * bytes_per_value)


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
               scale: tuple[float, float] = CROP_SCALE,
               ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """``(n, 4)`` random crop boxes ``(top, left, h, w)`` of an ``height x width`` map.

    As the code's ``RandomResizeCrop.get_params``: up to 10 draws of an area share in ``scale`` and
    a log-uniform aspect ratio ``w / h`` in ``ratio``; the first whose rounded box fits is taken
    (else the whole map), at a uniformly drawn position.
    """
    draws = (n, CROP_ATTEMPTS)
    area = height * width * (scale[0] + (scale[1] - scale[0])
                             * torch.rand(draws, generator=generator, dtype=torch.float64))
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low)
                       * torch.rand(draws, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w <= width) & (h <= height) & (w >= 1) & (h >= 1)
    first = fits.to(torch.uint8).argmax(1)
    rows = torch.arange(n)
    found = fits.any(1)
    w = torch.where(found, w[rows, first], torch.full((n,), float(width), dtype=torch.float64))
    h = torch.where(found, h[rows, first], torch.full((n,), float(height), dtype=torch.float64))
    top = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1).long()


def resize_crops(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop ``maps[i]`` to ``boxes[i] = (top, left, h, w)`` and resize it back to the map's size.

    Equal to ``F.interpolate(crop, (H, W), mode="bilinear", align_corners=False)`` per map, done for
    the batch as one ``grid_sample`` at the interpolation's source points (clamped to the crop's
    pixel centres, as the interpolation clamps them).
    """
    n, _, height, width = maps.shape
    boxes = boxes.to(torch.float64)

    def axis(size: int, start: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        source = (torch.arange(size, dtype=torch.float64) + 0.5) * (crop.unsqueeze(1) / size) - 0.5
        source = torch.minimum(source.clamp(min=0.0), (crop - 1).unsqueeze(1)) + start.unsqueeze(1)
        return (2.0 * source + 1.0) / size - 1.0  # grid_sample's normalised coordinate

    gy, gx = axis(height, boxes[:, 0], boxes[:, 2]), axis(width, boxes[:, 1], boxes[:, 3])
    grid = torch.stack([gx.unsqueeze(1).expand(n, height, width),
                        gy.unsqueeze(2).expand(n, height, width)], dim=-1)
    return F.grid_sample(maps, grid.to(device=maps.device, dtype=maps.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)


def random_resized_crop(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each ``(C, H, W)`` map of ``maps`` randomly cropped (`crop_boxes`) and resized back."""
    return resize_crops(maps, crop_boxes(len(maps), maps.shape[2], maps.shape[3], generator))


@METHODS.register("remind")
class Remind(Method):
    """REMIND: frozen early layers, product-quantised features stored, later layers trained with replay."""

    def __init__(
        self,
        model: nn.Module,
        lr: Annotated[float, Positive] = 0.01,
        split: Annotated[int, AtLeastOne] = 3,
        base_tasks: Annotated[int, AtLeastOne] = 1,
        memory_bytes: Annotated[int, AtLeastOne] = 78_400,
        pq_subvectors: Annotated[int, AtLeastOne] = 2,
        codebook_size: Annotated[int, Range(1, 256)] = 256,
        replay_ratio: Annotated[float, NonNegative] = 50.0,
        momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9,
        weight_decay: Annotated[float, NonNegative] = 1e-5,
        mixup_alpha: Annotated[float, NonNegative] = 0.1,
        random_crops: bool = True,
        pq_iters: Annotated[int, NonNegative] = 25,
        seed: int = 0,
    ) -> None:
        super().__init__(model, lr, seed)
        self.split = split
        self.base_tasks = base_tasks
        self.memory_bytes = memory_bytes
        self.pq_subvectors = pq_subvectors
        self.codebook_size = codebook_size
        self.replay_ratio = replay_ratio
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.mixup_alpha = mixup_alpha
        self.random_crops = random_crops
        self.pq_iters = pq_iters
        self.generator: torch.Generator | None = None
        self.frozen = False  # True once G is frozen and the quantiser fitted
        self.pq = ProductQuantizer()
        self.feature_shape: tuple[int, ...] | None = None  # G's output for one example
        self.codes: torch.Tensor | None = None  # (allocated, positions, m) uint8
        self.labels: torch.Tensor | None = None
        self.tasks: torch.Tensor | None = None
        self.stored = 0
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # base examples
        self.sample_masks: torch.Tensor | None = None
        self.epoch = 0

    # ----------------------------------------------------------------------------- structure
    @property
    def positions(self) -> int:
        """Feature vectors per example (``H W``; 1 without a spatial map)."""
        return math.prod(self.feature_shape[1:]) if self.feature_shape else 0

    @property
    def bytes_per_example(self) -> int:
        """Code bytes of one stored example: ``positions * pq_subvectors``."""
        return self.positions * self.pq_subvectors

    @property
    def capacity(self) -> int:
        """How many examples the code budget holds."""
        return self.memory_bytes // self.bytes_per_example if self.bytes_per_example else 0

    def g_modules(self) -> list[nn.Module]:
        return list(self.model.body)[:self.split]

    def f_modules(self) -> list[nn.Module]:
        return list(self.model.body)[self.split:]

    def g(self, x: torch.Tensor) -> torch.Tensor:
        """``G(x)``: the frozen part's features."""
        for module in self.g_modules():
            x = module(x)
        return x

    def f(self, h: torch.Tensor) -> torch.Tensor:
        """``F(h)``: the trained part's logits from features."""
        for module in self.f_modules():
            h = module(h)
        return self.model.head(h)

    def check_model(self, x: torch.Tensor) -> None:
        """Validate ``split``, the quantiser's shape and the budget against the model and inputs."""
        body = getattr(self.model, "body", None)
        head = getattr(self.model, "head", None)
        if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Module):
            raise ValueError("remind needs a lifelong Network whose body is an nn.Sequential "
                             "(the mlp or conv model)")
        if self.split > len(body):
            names = ", ".join(type(m).__name__ for m in body)
            raise ValueError(f"split={self.split} is beyond the model's body of {len(body)} modules "
                             f"({names}); G = body[:split] needs 1 <= split <= {len(body)}")
        if self.feature_shape is None:
            with torch.no_grad():
                self.feature_shape = tuple(self.g(x[:1]).shape[1:])
        if not self.feature_shape:
            raise ValueError(f"the features at split={self.split} have no channel dimension")
        channels = self.feature_shape[0]
        if channels % self.pq_subvectors:
            raise ValueError(f"pq_subvectors={self.pq_subvectors} must divide the {channels} "
                             f"channels of the features at split={self.split} (shape {self.feature_shape})")
        if self.memory_bytes < self.bytes_per_example:
            raise ValueError(
                f"memory_bytes={self.memory_bytes} cannot hold one example: its codes take "
                f"{self.bytes_per_example} bytes ({self.positions} positions x {self.pq_subvectors} "
                f"sub-vectors at split={self.split}); use memory_bytes >= {self.bytes_per_example}")

    # ----------------------------------------------------------------------------- hooks
    def begin_task(self, task: Task) -> None:
        self.check_model(task.x_train)
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        super().begin_task(task)
        # row t: the units an example of task t is scored over while this task trains
        masks = task.layout.replay_masks(task.id)
        self.sample_masks = None if masks is None else masks.to(next(self.model.parameters()).device)

    def begin_epoch(self, epoch: int, n_batches: int) -> None:
        self.epoch = epoch

    def observe(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        tasks = _task_ids(task_id, len(y), y.device)
        if not self.frozen:  # base initialisation: plain SGD on the whole network
            loss = self.loss_of(self.model(x), y, tasks)
            self.step(loss)
            if self.epoch == 0:
                self.pending.append((x.detach(), y.detach(), tasks))
            return loss.detach()
        with torch.no_grad():
            codes = self.encode(x)
            new = self.decode(codes)
        n_replay = min(int(round(self.replay_ratio * len(y))), self.stored)
        mixing = self.mixup_alpha > 0 and n_replay >= 1 and self.stored >= 2
        if mixing:
            n_replay = min(n_replay, self.stored // 2)
        slots = torch.randperm(self.stored, generator=self.generator)[:n_replay * (2 if mixing else 1)]
        slots = slots.to(self.codes.device)
        with torch.no_grad():
            batch = torch.cat([new, self.decode(self.codes[slots])])
            if self.random_crops and batch.dim() == 4:
                batch = random_resized_crop(batch, self.generator)
        ya = torch.cat([y, self.labels[slots]])
        ta = torch.cat([tasks, self.tasks[slots]])
        n_new = len(y)
        if mixing:
            lam = self.draw_lambda()
            a, b = batch[n_new:n_new + n_replay], batch[n_new + n_replay:]
            batch = torch.cat([batch[:n_new], lam * a + (1.0 - lam) * b])
            yb = torch.cat([y, ya[n_new + n_replay:]])
            tb = torch.cat([tasks, ta[n_new + n_replay:]])
            ya, ta = ya[:n_new + n_replay], ta[:n_new + n_replay]
            logits = self.f(batch)
            weight = torch.full((len(ya),), lam, device=logits.device)
            weight[:n_new] = 1.0
            loss = (weight * self.per_example_loss(logits, ya, ta)
                    + (1.0 - weight) * self.per_example_loss(logits, yb, tb)).mean()
        else:
            loss = self.per_example_loss(self.f(batch), ya, ta).mean()
        self.step(loss)
        self.store(codes, y, tasks)
        return loss.detach()

    def end_task(self, task: Task) -> None:
        if not self.frozen and task.id >= self.base_tasks - 1:
            self.finish_base()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if not self.frozen:
            return self.model(x)
        return self.f(self.decode(self.encode(x)))

    # ----------------------------------------------------------------------------- steps
    def per_example_loss(self, logits: torch.Tensor, y: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        masks = None if self.sample_masks is None else self.sample_masks[tasks]
        return F.cross_entropy(mask_logits(logits, masks), y, reduction="none")

    def loss_of(self, logits: torch.Tensor, y: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return self.per_example_loss(logits, y, tasks).mean()

    def draw_lambda(self) -> float:
        """``lambda ~ Beta(alpha, alpha)``, from a numpy generator seeded by ``self.generator``."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        return float(np.random.default_rng(seed).beta(self.mixup_alpha, self.mixup_alpha))

    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        trainable = [p for p in parameters if p.requires_grad]
        return torch.optim.SGD(trainable, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def freeze_g(self) -> None:
        for module in self.g_modules():
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def set_training(self, mode: bool) -> None:
        super().set_training(mode)
        if self.frozen:
            for module in self.g_modules():
                module.eval()

    # ----------------------------------------------------------------------------- codes
    def to_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` -> ``(N * positions, C)``, position-major within an example."""
        return features.movedim(1, -1).reshape(-1, self.feature_shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs -> ``(N, positions, m)`` uint8 codes of ``G(x)``."""
        vectors = self.to_vectors(self.g(x))
        return self.pq.encode(vectors).view(len(x), self.positions, self.pq_subvectors)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, positions, m)`` codes -> reconstructed features ``(N, C, *spatial)``."""
        vectors = self.pq.decode(codes.reshape(-1, self.pq_subvectors))
        channels, spatial = self.feature_shape[0], self.feature_shape[1:]
        return vectors.view(len(codes), *spatial, channels).movedim(-1, 1)

    @torch.no_grad()
    def finish_base(self) -> None:
        """Freeze G, fit the quantiser on the base examples' features, store their codes."""
        x = torch.cat([p[0] for p in self.pending])
        y = torch.cat([p[1] for p in self.pending])
        tasks = torch.cat([p[2] for p in self.pending])
        self.pending = []
        self.freeze_g()
        self.frozen = True
        # at most 256 training vectors per centroid (faiss's bound), drawn over all positions
        total = len(x) * self.positions
        bound = MAX_POINTS_PER_CENTROID * self.codebook_size
        chosen = torch.randperm(total, generator=self.generator)[:bound].sort().values
        sample = []
        for start in range(0, len(x), ENCODE_CHUNK):
            vectors = self.to_vectors(self.g(x[start:start + ENCODE_CHUNK]))
            lo, hi = start * self.positions, start * self.positions + len(vectors)
            rows = chosen[(chosen >= lo) & (chosen < hi)] - lo
            sample.append(vectors[rows.to(vectors.device)])
        self.pq.fit(torch.cat(sample), self.pq_subvectors, self.codebook_size, self.pq_iters,
                    self.generator, max_points_per_centroid=None)
        for start in range(0, len(x), ENCODE_CHUNK):
            end = start + ENCODE_CHUNK
            self.store(self.encode(x[start:end]), y[start:end], tasks[start:end])
        # the streaming phase trains F alone with a fresh optimizer (the code's)
        self.optimizer = self.make_optimizer(self.model.parameters())

    def store(self, codes: torch.Tensor, y: torch.Tensor, tasks: torch.Tensor) -> None:
        """Add examples in order; once full, each addition evicts a random stored example of the
        label with the most stored examples (counting the new one, which may be the one evicted)."""
        n = len(y)
        free = min(self.capacity - self.stored, n)
        if free > 0:
            self.reserve(self.stored + free, codes, y)
            rows = slice(self.stored, self.stored + free)
            self.codes[rows], self.labels[rows], self.tasks[rows] = codes[:free], y[:free], tasks[:free]
            self.stored += free
        if free == n:
            return
        start = max(free, 0)
        counts = torch.bincount(self.labels[:self.stored].cpu(), minlength=int(y.max()) + 1).tolist()
        for i in range(start, n):
            label = int(y[i])
            counts += [0] * (label + 1 - len(counts))
            counts[label] += 1
            top = max(range(len(counts)), key=lambda c: (counts[c], -c))  # most, then lowest unit
            members = (self.labels[:self.stored] == top).nonzero().squeeze(1)
            pool = len(members) + (1 if top == label else 0)
            pick = int(torch.randint(pool, (1,), generator=self.generator))
            counts[top] -= 1
            if pick == len(members):  # the new example itself goes
                continue
            slot = members[pick]
            self.codes[slot], self.labels[slot], self.tasks[slot] = codes[i], y[i], tasks[i]

    def reserve(self, rows: int, codes: torch.Tensor, y: torch.Tensor) -> None:
        """Storage for at least ``rows`` examples (grown by doubling, up to the capacity)."""
        allocated = 0 if self.codes is None else len(self.codes)
        if rows <= allocated:
            return
        size = min(self.capacity, max(rows, 2 * allocated, 64))
        grown_codes = torch.zeros((size, *codes.shape[1:]), dtype=torch.uint8, device=codes.device)
        grown_labels = torch.zeros(size, dtype=torch.long, device=y.device)
        grown_tasks = torch.zeros(size, dtype=torch.long, device=y.device)
        if allocated:
            grown_codes[:self.stored] = self.codes[:self.stored]
            grown_labels[:self.stored] = self.labels[:self.stored]
            grown_tasks[:self.stored] = self.tasks[:self.stored]
        self.codes, self.labels, self.tasks = grown_codes, grown_labels, grown_tasks

    def stored_examples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes, labels, task ids)`` of every stored example, in slot order."""
        if self.codes is None:
            empty = torch.zeros(0, dtype=torch.long)
            return torch.zeros((0, self.positions, self.pq_subvectors), dtype=torch.uint8), empty, empty
        n = self.stored
        return self.codes[:n], self.labels[:n], self.tasks[:n]

    # ----------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> Remind:
        super().to(device)
        self.pq.to(device)
        if self.codes is not None:
            self.codes, self.labels, self.tasks = (
                t.to(device) for t in (self.codes, self.labels, self.tasks))
        return self

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        codes, labels, tasks = self.stored_examples()
        pending = None
        if self.pending:
            pending = tuple(torch.cat([p[i] for p in self.pending]) for i in range(3))
        state.update(
            generator=None if self.generator is None else self.generator.get_state(),
            frozen=self.frozen,
            feature_shape=self.feature_shape,
            pq=self.pq.state_dict(),
            codes=codes.clone(), labels=labels.clone(), tasks=tasks.clone(),
            pending=pending,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state["frozen"])
        self.feature_shape = None if state["feature_shape"] is None else tuple(state["feature_shape"])
        if self.frozen:
            self.freeze_g()
        super().load_state_dict(state)
        self.pq.load_state_dict(state["pq"])
        self.codes, self.labels, self.tasks = state["codes"], state["labels"], state["tasks"]
        self.stored = len(self.labels)
        if self.stored == 0:
            self.codes = self.labels = self.tasks = None
        self.pending = [] if state["pending"] is None else [tuple(state["pending"])]
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def memory(self) -> dict[str, int]:
        codes, labels, tasks = self.stored_examples()
        pending = sum(tensor_bytes(*p) for p in self.pending)
        out = {
            **super().memory(),
            "stored_examples": self.stored,
            "bytes_per_example": self.bytes_per_example,
            "code_bytes": tensor_bytes(codes),
            "codebook_bytes": self.pq.nbytes,
            "label_bytes": tensor_bytes(labels, tasks),
            "pending_bytes": pending,
        }
        out["stored_bytes"] = out["code_bytes"] + out["codebook_bytes"] + out["label_bytes"] + pending
        return out

    def report(self) -> dict[str, Any]:
        return {"g_frozen": self.frozen, "memory_capacity": self.capacity} if self.feature_shape else {}

    def __repr__(self) -> str:
        return (f"Remind(lr={self.lr}, split={self.split}, memory_bytes={self.memory_bytes}, "
                f"pq_subvectors={self.pq_subvectors}, replay_ratio={self.replay_ratio})")


def _task_ids(task_id: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(task_id, torch.Tensor) and task_id.numel() > 1:
        return task_id.to(device=device, dtype=torch.long)
    return torch.full((n,), int(task_id), dtype=torch.long, device=device)
