"""Sparsifying task vectors: TIES magnitude trim and DARE random drop, one tensor in row chunks.

Both follow mergekit (``mergekit/sparsify.py``), so that paint and mergekit merge the same
inputs to the same outputs:

- **magnitude trim** (TIES, arXiv:2306.01708): keep the ``max(1, int(density * n))``
  entries of largest magnitude of each tensor's task vector. The k-th largest magnitude is
  found exactly by a radix select over the floats' bit patterns (integer histograms, one
  pass per 16 bits), so the tensor is never held whole nor sorted; entries tied with it are
  kept in flat order until k are kept (mergekit's unstable argsort keeps an arbitrary
  subset of such ties).
- **random drop** (DARE, arXiv:2311.03099): keep each entry with probability
  ``1 - drop_rate`` (``torch.bernoulli`` on a generator seeded per (seed, tensor name,
  model index)), then rescale: ``l1`` matches the L1 norm of the unsparsified tensor
  (mergekit's ``rescale: true``), ``paper`` divides by ``1 - drop_rate`` (the DARE paper),
  ``none`` does not rescale.

A sparsifier is built from a first pass over the tensor's chunks and then applied to the
same chunks in the same order (it keeps state between chunks).
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from paint.weights.chunks import OrderedSum

TauChunks = Callable[[], Iterable[torch.Tensor]]
"""A fresh iteration over one model's task-vector row chunks (work dtype) at each call."""

Rescale = Literal["l1", "paper", "none"]
_L1_EPS = 1e-7  # mergekit's rescaled_masked_tensor leaves near-zero norms unscaled


def tensor_seed(seed: int, key: str, index: int) -> int:
    """A 63-bit seed derived from (seed, tensor name, model index), stable across runs and platforms."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def keep_count(density: float, numel: int) -> int:
    """How many entries a magnitude trim keeps: ``max(1, int(density * numel))``, as mergekit."""
    return max(1, int(density * numel))


# ---------------------------------------------------------------------------- magnitude trim


def _order_keys(mag: torch.Tensor) -> torch.Tensor:
    """Non-negative floats -> integer keys with the same order (IEEE bit patterns of non-negative floats sort)."""
    if mag.dtype == torch.float64:
        return mag.reshape(-1).view(torch.int64)
    return mag.reshape(-1).to(torch.float32).view(torch.int32)


def _histogram(chunks: TauChunks, prefix: int, known: int, step: int, nbits: int | None) -> tuple[torch.Tensor, int]:
    """Counts of the ``step`` bits below the ``known`` high bits, over the entries whose high bits equal ``prefix``.

    ``nbits`` None: take it from the first chunk's dtype (31 for float32, 63 for float64: the
    sign bit of ``|x|`` is 0). Returns the histogram and ``nbits``.
    """
    hist = torch.zeros(1 << step, dtype=torch.int64)
    for chunk in chunks():
        if nbits is None:
            nbits = 63 if chunk.dtype == torch.float64 else 31
        shift = nbits - known - step
        keys = _order_keys(chunk.abs())
        if known:
            keys = keys[(keys >> (shift + step)) == prefix]
        digits = keys >> shift if known == 0 else (keys >> shift) & ((1 << step) - 1)  # the top digit needs no mask
        hist += torch.bincount(digits, minlength=1 << step)
    return hist, 31 if nbits is None else nbits


def kth_largest_magnitude(chunks: TauChunks, density: float) -> tuple[torch.Tensor, int] | None:
    """The k-th largest ``|x|`` over all chunks (``k = keep_count(density, n)``) and how many ties with it to keep.

    Radix select: each pass histograms the next 16 bits of the entries whose higher bits
    match the prefix found so far (2 passes for float32, 4 for float64); memory is one chunk,
    and the result is exact. None when the trim keeps everything.
    """
    found = _radix_select(chunks, density)
    return None if found is None else found[:2]


def _radix_select(chunks: TauChunks, density: float) -> tuple[torch.Tensor, int, int] | None:
    """:func:`kth_largest_magnitude` plus how many entries equal the k-th largest magnitude in all."""
    prefix, known, remaining, nbits, equal = 0, 0, 0, None, 0
    while nbits is None or known < nbits:
        step = 16 if nbits is None else min(16, nbits - known)
        hist, nbits = _histogram(chunks, prefix, known, step, nbits)
        if known == 0:
            numel = int(hist.sum())
            if density >= 1.0 or numel == 0:
                return None
            remaining = keep_count(density, numel)
        at_least = torch.flip(hist, [0]).cumsum(0)  # at_least[j]: entries whose digit >= 2**step - 1 - j
        j = int(torch.searchsorted(at_least, remaining))
        remaining -= int(at_least[j - 1]) if j else 0
        equal = int(hist[(1 << step) - 1 - j])  # the entries whose bits so far equal the prefix's
        prefix = (prefix << step) | ((1 << step) - 1 - j)
        known += step
    if nbits == 63:
        return torch.tensor(prefix, dtype=torch.int64).view(torch.float64), remaining, equal
    return torch.tensor(prefix, dtype=torch.int32).view(torch.float32), remaining, equal


class MagnitudeTrim:
    """Zero all but the top-k magnitudes of a tensor, applied chunk by chunk in order.

    Args:
        threshold: the k-th largest magnitude.
        ties: how many entries equal to ``threshold`` are kept (the first ones in flat order).
        equal: how many entries equal ``threshold`` in the whole tensor, when known: keeping
            them all (the usual case, a single one) needs no count of them chunk by chunk.
    """

    def __init__(self, threshold: torch.Tensor, ties: int, equal: int | None = None):
        self.threshold = threshold
        self.ties_left = ties
        self._all_ties = equal is not None and ties >= equal
        # the largest float below the threshold: |x| > below  <=>  |x| >= threshold
        self._below = float(torch.nextafter(threshold, torch.tensor(-math.inf, dtype=threshold.dtype)))

    def __call__(self, tau: torch.Tensor) -> torch.Tensor:
        if self._all_ties or self.ties_left == 0:
            # |x| kept above the bound, else 0, given x's sign back: tau * keep bit for bit (NaN stays NaN).
            bound = self._below if self._all_ties else float(self.threshold)
            return F.threshold_(tau.abs(), bound, 0.0).copysign_(tau)
        mag = tau.abs()
        keep = mag > self.threshold
        tied = mag == self.threshold
        n_tied = int(tied.sum())
        if n_tied and self.ties_left >= n_tied:
            keep |= tied
        elif n_tied and self.ties_left > 0:
            rank = tied.reshape(-1).cumsum(0).reshape(tied.shape)  # 1-based rank among this chunk's ties
            keep |= tied & (rank <= self.ties_left)
        self.ties_left = max(0, self.ties_left - n_tied)
        return tau * keep


def magnitude_trim(chunks: TauChunks, density: float) -> MagnitudeTrim | None:
    """The TIES trim of one task vector (None: density keeps every entry)."""
    found = _radix_select(chunks, density)
    return None if found is None else MagnitudeTrim(*found)


def trim_magnitude(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Whole-tensor TIES trim: keep the ``max(1, int(density * numel))`` largest magnitudes."""
    trim = magnitude_trim(lambda: [tau], density)
    return tau if trim is None else trim(tau)


# ---------------------------------------------------------------------------- random drop


def keep_where(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, x, 0.0)`` bit for bit, at a quarter of its cost when ``x`` is finite.

    ``x * mask`` is ``x`` or a signed zero, and adding +0 turns -0 into +0 and leaves every other
    value alone; an infinity or NaN (``inf * 0`` is NaN) takes ``torch.where`` itself.
    """
    if not math.isfinite(float(x.sum())):
        return torch.where(mask, x, 0.0)
    return (x * mask).add_(0.0)


class RandomDrop:
    """DARE drop of one tensor, chunk by chunk in order: the mask continues one generator's stream.

    ``torch.bernoulli`` draws one number per entry in flat order, so masking the rows in
    one chunk or in many gives the same mask; it is mergekit's draw when mergekit's global
    generator is seeded with the same seed. ``masks`` replays masks already drawn (bit-packed,
    one per chunk, in order) instead of drawing them again.
    """

    def __init__(
        self,
        seed: int,
        keep_prob: float,
        scale: float = 1.0,
        masks: Iterable[np.ndarray] = (),
        finite: bool = False,
    ):
        self.seed, self.keep_prob, self.scale = seed, keep_prob, scale
        self.finite = finite  # every entry of the tensor is known to be finite: no check per chunk
        self._gen = torch.Generator().manual_seed(seed)
        self._replay = deque(masks)

    def mask(self, tau: torch.Tensor) -> torch.Tensor:
        """The keep mask (bool) of the next chunk."""
        if self._replay:
            bits = np.unpackbits(self._replay.popleft(), count=tau.numel()).view(np.bool_)
            return torch.from_numpy(bits).reshape(tau.shape)
        # torch.bernoulli(full(keep_prob)) draws one float32 uniform per entry and keeps it when below
        # keep_prob; torch.rand draws the same uniforms from the same stream, 4x faster (tests hold it).
        return torch.rand(tau.shape, generator=self._gen) < self.keep_prob

    def __call__(self, tau: torch.Tensor) -> torch.Tensor:
        mask = self.mask(tau)
        masked = (tau * mask).add_(0.0) if self.finite else keep_where(mask, tau)
        return masked if self.scale == 1.0 else masked.mul_(self.scale)


def random_drop(chunks: TauChunks, drop_rate: float, seed: int, rescale: Rescale) -> RandomDrop | None:
    """The DARE drop of one task vector (None: nothing is dropped).

    ``l1`` needs a first pass: the L1 norms before and after the mask, whose bits (one per
    entry) are kept for the merge pass rather than drawn twice. The first norm also tells
    whether every entry is finite (a sum of finite float32 magnitudes in float64 cannot
    overflow), so the masks skip ``keep_where``'s check.
    """
    if drop_rate <= 0.0:
        return None
    keep = 1.0 - drop_rate
    if rescale == "paper":
        return RandomDrop(seed, keep, 1.0 / keep)
    if rescale == "none":
        return RandomDrop(seed, keep)
    probe, before, after, masks = RandomDrop(seed, keep), OrderedSum(), OrderedSum(), []
    for tau in chunks():
        mask = probe.mask(tau)
        masks.append(np.packbits(mask.reshape(-1).numpy()))
        mag = tau.abs()
        before.add(mag)
        after.add(mag.mul_(mask) if math.isfinite(before.value) else keep_where(mask, mag))  # |x| * 0 is +0
    finite = math.isfinite(before.value)
    if before.value < _L1_EPS or after.value < _L1_EPS:
        return RandomDrop(seed, keep, masks=masks, finite=finite)
    return RandomDrop(seed, keep, before.value / after.value, masks=masks, finite=finite)


def drop_and_rescale(tau: torch.Tensor, drop_rate: float, seed: int, rescale: Rescale = "l1") -> torch.Tensor:
    """Whole-tensor DARE: drop each entry with probability ``drop_rate``, then rescale."""
    drop = random_drop(lambda: [tau], drop_rate, seed, rescale)
    return tau if drop is None else drop(tau)
