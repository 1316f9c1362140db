"""Row chunks of one tensor, and sums over them that do not depend on how the tensor is cut.

Every merge method sees a tensor as consecutive row chunks along dim 0 (one chunk when the
tensor is small). A method that needs a statistic of the whole tensor (a trim threshold, an
L1 norm, a cosine) computes it in a first pass over the chunks; :class:`OrderedSum` makes
such a sum bit-identical however the rows were chunked, so a streamed merge equals the
in-memory one exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

ChunkSource = Callable[[int], Iterator[torch.Tensor]]
"""``source(i)`` iterates over source i's row chunks of one tensor, in order (0 = base, 1.. = models)."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute in float32 or wider: half precision sums lose too much."""
    return torch.promote_types(dtype, torch.float32)


def single(tensors: dict[int, torch.Tensor]) -> ChunkSource:
    """A source whose tensors are already in memory, each as one chunk."""
    return lambda i: iter([tensors[i]])


SUM_BLOCK = 1 << 16  # entries per block of an OrderedSum


class OrderedSum:
    """A float64 sum of a tensor's entries that does not depend on how its rows were chunked.

    The flat (row-major) entries are cut into blocks of :data:`SUM_BLOCK` at fixed positions
    (0, B, 2B, ...), whatever the chunks; a block that straddles two chunks is assembled from
    both. Each block is reduced by the same call (``sum(dtype=float64)`` of a 1-D block of B
    entries: the same reduction tree for the same length and thread count, wherever the block
    lies in memory) and the block sums are added in order, so the total is bit-identical
    however the rows were chunked, at the speed of a plain sum (a sequential float64
    ``cumsum``, used before, took 15x longer).
    """

    def __init__(self) -> None:
        self._total = 0.0  # the blocks summed so far, in order
        self._carry: torch.Tensor | None = None  # the first entries of the next block (a copy)

    def add(self, chunk: torch.Tensor) -> None:
        """Add every entry of ``chunk`` (the next rows of the tensor)."""
        flat = chunk.reshape(-1)
        if self._carry is not None:
            need = SUM_BLOCK - self._carry.numel()
            self._carry = torch.cat([self._carry, flat[:need]])
            flat = flat[need:]
            if self._carry.numel() < SUM_BLOCK:
                return
            self._total += float(self._carry.sum(dtype=torch.float64))
            self._carry = None
        full = flat.numel() - flat.numel() % SUM_BLOCK
        for start in range(0, full, SUM_BLOCK):
            self._total += float(flat[start : start + SUM_BLOCK].sum(dtype=torch.float64))
        if full < flat.numel():
            self._carry = flat[full:].clone()

    @property
    def value(self) -> float:
        """The sum of every entry added so far (the last, partial block included)."""
        if self._carry is None:
            return self._total
        return self._total + float(self._carry.sum(dtype=torch.float64))
