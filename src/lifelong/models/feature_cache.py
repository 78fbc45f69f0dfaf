"""`FeatureCache`: a frozen encoder's pooled features by input row, computed once.

A frozen encoder with no plugin computes the same pooled feature for a row of token ids every time,
so methods that train only what sits on top of it (finetune, ewc, agem, replay, hat, joint,
independent... on ``make_model("transformer", freeze=True)``) would recompute the encoder for every
batch of every epoch and at every evaluation. `lifelong.models.text_encoder.TextEncoder` therefore
keeps a `FeatureCache`: the pooled feature of each row, computed the first time the row is seen and
looked up afterwards (batched: a 62-bit hash of every row of the batch at once, one
``searchsorted``, an exact check of the stored ids; rows not found are encoded together and added).
It is used only when it cannot change the result:

- the encoder is frozen, holds no plugin and no forward hook, is in eval mode, and none of its
  parameters requires a gradient (so nothing must flow into it);
- no ``torch.func`` transform (``vmap``/``grad``, as EWC's per-example gradients use), autocast or
  ``torch.compile`` tracing is active (they get the plain forward);
- the encoder's weights and buffers are the ones the cache was filled with: the cache belongs to
  a fingerprint of their storage and version counters, so any in-place change (optimizer step,
  ``copy_``, ``load_state_dict``), replacement or move (``.to(device)``, ``.double()``) starts a
  new, empty cache. `insert_plugins`, ``freeze(False)`` and `TextEncoder.reset_parameters` of a
  random encoder drop it; ``reset_parameters`` of a pretrained encoder whose weights are still the
  pretrained ones copies nothing and keeps it.

The features are those the first computation gave. The CPU forward is batch-invariant (a row's
feature does not depend on the rows beside it; tested), so cached outputs are bit-identical to a
recomputation; GPU kernels chosen per batch size may differ in the last bits, where
``feature_cache=False`` gives the plain behaviour. The cache is not a parameter or buffer: it is
not in ``state_dict()``, checkpoints or pickles. Deep copies of a frozen encoder share it
(``copy.deepcopy`` keeps it only when the copied encoder's weights are the ones it was filled with;
each copy leaves it as soon as its own weights change). It holds at most ``cache_limit`` rows (the
default, `DEFAULT_CACHE_LIMIT`, covers all of 20 Newsgroups); later rows are recomputed every
time. `TextEncoder.feature_cache_info` reports its rows, bytes, hits and misses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Rows a `FeatureCache` holds by default: all of 20 Newsgroups (18,821 documents) fits.
DEFAULT_CACHE_LIMIT = 32768
_PRIME = 2**31 - 1  # ids and hash coefficients are reduced below it, so products stay below 2**62


class FeatureCache:
    """Pooled features by input row (its token ids), kept on the features' device.

    ``cached(ids, encode)`` returns ``encode(ids)`` for an int64 batch ``[N, L]``, calling
    ``encode`` only on the rows it has not seen (once per distinct row). A row's key is a 62-bit
    hash of its ids (two position-weighted sums modulo the prime ``2**31 - 1``, computed for the
    whole batch at once); keys are kept sorted, so a batch is looked up with one
    ``searchsorted``, and every hit is confirmed against the row's stored ids: a hash collision
    costs a recomputation, never a wrong feature. Rows are stored in arrival order until
    ``limit`` rows are held; rows after that are encoded every time (``overflow`` counts them).
    The cache holds one row length (the first it stores); rows of another length are encoded and
    not stored.

    ``copy.deepcopy`` returns the cache itself (copies share it); `TextEncoder` decides when a
    copy may keep it.
    """

    def __init__(self, limit: int = DEFAULT_CACHE_LIMIT) -> None:
        if int(limit) < 1:
            raise ValueError(f"cache_limit={limit} must be at least 1 (rows)")
        self.limit = int(limit)
        self.size = 0
        self.hits = self.misses = self.overflow = 0
        self.features: torch.Tensor | None = None  # [capacity, D]
        self.ids: torch.Tensor | None = None  # [capacity, L] int32: the stored rows
        self.keys: torch.Tensor | None = None  # [size] int64, sorted
        self.slots: torch.Tensor | None = None  # [size] int64: the row of each sorted key
        self._coefficients: torch.Tensor | None = None  # [2, L] int64 in [1, _PRIME)

    def __deepcopy__(self, memo: dict) -> FeatureCache:
        return self

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes allocated on the device (stored features and ids, with their spare capacity, and keys)."""
        tensors = (self.features, self.ids, self.keys, self.slots, self._coefficients)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def info(self) -> dict[str, int]:
        """Rows held, the limit, bytes allocated, and rows found / encoded / not stored so far."""
        return {"rows": self.size, "limit": self.limit, "bytes": self.nbytes, "hits": self.hits,
                "misses": self.misses, "overflow": self.overflow}

    def _hash(self, ids: torch.Tensor) -> torch.Tensor:
        """One int64 key in ``[0, _PRIME**2)`` per row of ``ids`` ``[N, L]``."""
        width = ids.shape[1]
        coefficients = self._coefficients
        if coefficients is None or coefficients.shape[1] != width or coefficients.device != ids.device:
            with torch.inference_mode(False):
                generator = torch.Generator().manual_seed(width)
                coefficients = torch.randint(1, _PRIME, (2, width), generator=generator).to(ids.device)
            self._coefficients = coefficients
        residues = ids.remainder(_PRIME)
        sums = (residues[:, None, :] * coefficients).remainder_(_PRIME).sum(2).remainder_(_PRIME)
        return sums[:, 0] * _PRIME + sums[:, 1]

    def _find(self, keys: torch.Tensor, rows: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(found, slot)`` per key: stored (with the same ids when ``rows`` is given) and where."""
        position = torch.searchsorted(self.keys, keys).clamp_(max=self.size - 1)
        slot = self.slots[position]
        found = self.keys[position] == keys
        if rows is not None:
            found &= (self.ids[slot] == rows).all(1)
        return found, slot

    def cached(self, ids: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``encode(ids)``, with the rows already stored taken from the cache (see the class doc)."""
        n = ids.shape[0]
        if n == 0 or (self.ids is not None and (ids.shape[1] != self.ids.shape[1]
                                                or ids.device != self.ids.device)):
            self.misses += n
            return encode(ids)
        keys, rows = self._hash(ids), ids.to(torch.int32)
        if self.size:
            found, slot = self._find(keys, rows)
            n_found = int(found.sum())
        else:
            n_found = 0
        self.hits += n_found
        self.misses += n - n_found
        if n_found == n:
            return self.features[slot]
        if n_found == 0:
            features = self._encode_once(ids, encode)
            self._insert(keys, rows, features)
            return features
        missing = (~found).nonzero().squeeze(1)
        computed = self._encode_once(ids[missing], encode)
        out = self.features[slot]
        out[missing] = computed
        self._insert(keys[missing], rows[missing], computed)
        return out

    @staticmethod
    def _encode_once(ids: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``encode(ids)``, encoding a row that occurs several times in ``ids`` once."""
        if len(ids) > 1:
            distinct, inverse = torch.unique(ids, dim=0, return_inverse=True)
            if len(distinct) < len(ids):
                return encode(distinct)[inverse]
        return encode(ids)

    def _insert(self, keys: torch.Tensor, rows: torch.Tensor, features: torch.Tensor) -> None:
        """Store new rows (each key once; keys already stored, i.e. collisions, are left out)."""
        with torch.inference_mode(False), torch.no_grad():
            if self.size:
                stored, _ = self._find(keys)
                new = ~stored
                keys, rows, features = keys[new], rows[new], features[new]
            unique, inverse = torch.unique(keys, return_inverse=True)
            if len(unique) < len(keys):  # a row repeated within the batch: keep its first copy
                index = torch.arange(len(keys), device=keys.device)
                first = torch.full_like(unique, len(keys)).scatter_reduce_(0, inverse, index, "amin")
                keys, rows, features = keys[first], rows[first], features[first]
            room = self.limit - self.size
            if len(keys) > room:
                self.overflow += len(keys) - room
                keys, rows, features = keys[:room], rows[:room], features[:room]
            m = len(keys)
            if m == 0:
                return
            self._reserve(self.size + m, rows, features)
            start = self.size
            self.features[start:start + m] = features
            self.ids[start:start + m] = rows
            slots = torch.arange(start, start + m, device=keys.device)
            if self.size:
                keys, slots = torch.cat([self.keys, keys]), torch.cat([self.slots, slots])
            self.keys, order = torch.sort(keys)
            self.slots = slots[order]
            self.size += m

    def _reserve(self, needed: int, rows: torch.Tensor, features: torch.Tensor) -> None:
        """Room for ``needed`` rows (capacity doubles, up to ``limit``)."""
        capacity = 0 if self.features is None else self.features.shape[0]
        if needed <= capacity:
            return
        capacity = min(self.limit, max(needed, 2 * capacity, 256))
        grown_features = features.new_empty((capacity, *features.shape[1:]))
        grown_ids = rows.new_empty((capacity, rows.shape[1]))
        if self.size:
            grown_features[:self.size] = self.features[:self.size]
            grown_ids[:self.size] = self.ids[:self.size]
        self.features, self.ids = grown_features, grown_ids


def under_transform(device_type: str) -> bool:
    """Whether a ``torch.func`` transform, autocast or ``torch.compile`` tracing is active."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        if compiler.is_compiling():
            return True
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (``-0.0`` is not ``0.0``), ``b`` moved to ``a``'s device."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if a.is_floating_point() and as_int is not None:
        return torch.equal(a.detach().view(as_int), b.view(as_int))
    return torch.equal(a, b)
