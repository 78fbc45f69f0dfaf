"""Product quantisation (PQ; Jégou, Douze & Schmid, TPAMI 2011) in plain torch, for REMIND.

A ``D``-dimensional vector is cut into ``m`` sub-vectors of ``D / m`` values; sub-space ``j`` has
its own codebook of ``k <= 256`` centroids, learnt by k-means on training vectors, and a vector is
stored as ``m`` bytes: the index of the nearest centroid of each of its sub-vectors. Decoding
concatenates the chosen centroids. This is what REMIND's code does with ``faiss.ProductQuantizer(
D, m, 8)``; the k-means follows faiss's defaults: 25 Lloyd iterations started from ``k`` distinct
training vectors drawn at random, at most ``256 k`` training vectors (a random sample of them
beyond that, faiss's ``max_points_per_centroid``). Where faiss splits a large cluster to refill an
empty one, an empty centroid here restarts at a training vector drawn at random. With fewer
training vectors than ``k`` the codebook has one centroid per training vector.

Every random choice comes from the ``torch.Generator`` given to `ProductQuantizer.fit`, so the same
vectors and generator state give the same codebooks. Sums over clusters use ``index_add_``, which
is deterministic on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

#: faiss's ``ClusteringParameters``: Lloyd iterations and the training-sample bound per centroid
KMEANS_ITERS = 25
MAX_POINTS_PER_CENTROID = 256
#: rows of vectors assigned at once (bounds the ``rows x k`` distance matrix)
CHUNK = 16384


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean distance) of every row of ``x``.

    ``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``; ``||x||^2`` is the same for every centroid and left
    out. Ties go to the lowest index.
    """
    c2 = (centroids * centroids).sum(1)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for start in range(0, len(x), CHUNK):
        rows = x[start:start + CHUNK]
        out[start:start + CHUNK] = torch.addmm(c2, rows, centroids.T, alpha=-2.0).argmin(1)
    return out


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """``min(k, len(x))`` centroids of the rows of ``x`` by Lloyd's algorithm (``iters`` steps)."""
    n = len(x)
    k = min(k, n)
    centroids = x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()
    for _ in range(iters):
        assign = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        empty = (~filled).nonzero().squeeze(1)
        if len(empty):
            picks = torch.randint(n, (len(empty),), generator=generator).to(x.device)
            centroids[empty] = x[picks]
    return centroids


class ProductQuantizer:
    """``m`` codebooks of at most 256 centroids over consecutive slices of ``D`` values.

    ``codebooks`` has shape ``(m, k, D / m)`` once fitted (float32, on the device of the fitted
    vectors). `encode` maps ``(N, D)`` vectors to ``(N, m)`` uint8 codes, `decode` maps codes back
    to ``(N, D)`` vectors.
    """

    def __init__(self) -> None:
        self.codebooks: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.codebooks is not None

    @property
    def m(self) -> int:
        return 0 if self.codebooks is None else self.codebooks.shape[0]

    @property
    def k(self) -> int:
        return 0 if self.codebooks is None else self.codebooks.shape[1]

    @property
    def dim(self) -> int:
        return 0 if self.codebooks is None else self.codebooks.shape[0] * self.codebooks.shape[2]

    def fit(self, features: torch.Tensor, m: int, k: int = 256, iters: int = KMEANS_ITERS,
            generator: torch.Generator | None = None,
            max_points_per_centroid: int | None = MAX_POINTS_PER_CENTROID) -> ProductQuantizer:
        """Learn the ``m`` codebooks of ``k`` centroids from the rows of ``features`` (``(N, D)``).

        At most ``max_points_per_centroid * k`` rows (a random sample, as faiss) train the
        k-means; every sub-space sees the same rows.
        """
        if features.dim() != 2 or len(features) == 0:
            raise ValueError(f"features must be a non-empty (N, D) matrix; got shape {tuple(features.shape)}")
        dim = features.shape[1]
        if m < 1 or dim % m:
            raise ValueError(f"m={m} sub-vectors must divide the {dim} values of a feature vector")
        if not 1 <= k <= 256:
            raise ValueError(f"k={k} centroids must be between 1 and 256 (codes are one byte)")
        if iters < 0:
            raise ValueError(f"iters={iters} must be non-negative")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        x = features.detach().float()
        if max_points_per_centroid is not None and len(x) > max_points_per_centroid * k:
            rows = torch.randperm(len(x), generator=generator)[:max_points_per_centroid * k]
            x = x[rows.sort().values.to(x.device)]
        sub = x.view(len(x), m, dim // m)
        books = [kmeans(sub[:, j].contiguous(), k, iters, generator) for j in range(m)]
        self.codebooks = torch.stack(books)
        return self

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` vectors -> ``(N, m)`` uint8 codes (nearest centroid per sub-vector)."""
        self._check_fitted()
        m, _, d = self.codebooks.shape
        if features.dim() != 2 or features.shape[1] != m * d:
            raise ValueError(f"features of shape {tuple(features.shape)}; expected (N, {m * d})")
        sub = features.detach().to(self.codebooks.dtype).view(len(features), m, d)
        codes = torch.stack([nearest(sub[:, j], self.codebooks[j]) for j in range(m)], dim=1)
        return codes.to(torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, m)`` codes -> ``(N, D)`` vectors (the chosen centroids side by side)."""
        self._check_fitted()
        m, _, d = self.codebooks.shape
        if codes.dim() != 2 or codes.shape[1] != m:
            raise ValueError(f"codes of shape {tuple(codes.shape)}; expected (N, {m})")
        index = codes.long().to(self.codebooks.device)
        # row j of the flat codebook table: sub-space j's centroids start at j * k
        flat = self.codebooks.reshape(-1, d)
        offsets = torch.arange(m, device=index.device) * self.codebooks.shape[1]
        return flat[index + offsets].reshape(len(codes), m * d)

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """``decode(encode(features))``: the vectors as the quantiser sees them."""
        return self.decode(self.encode(features))

    @property
    def nbytes(self) -> int:
        """Bytes of the codebooks (0 before `fit`)."""
        return 0 if self.codebooks is None else self.codebooks.numel() * self.codebooks.element_size()

    def to(self, device: torch.device | str) -> ProductQuantizer:
        if self.codebooks is not None:
            self.codebooks = self.codebooks.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"codebooks": self.codebooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.codebooks = state["codebooks"]

    def _check_fitted(self) -> None:
        if self.codebooks is None:
            raise ValueError("the product quantizer is not fitted yet; call fit(features, m) first")

    def __repr__(self) -> str:
        if self.codebooks is None:
            return "ProductQuantizer(not fitted)"
        return f"ProductQuantizer(dim={self.dim}, m={self.m}, k={self.k})"
