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


class OrderedSum:
    """A float64 running sum of a tensor's entries, added in flat (row-major) order.

    ``torch.cumsum`` scans sequentially, so adding the rows in one chunk or in many
    performs the same float64 additions in the same order: the total is bit-identical.
    """

    def __init__(self) -> None:
        self._total = torch.zeros(1, dtype=torch.float64)

    def add(self, chunk: torch.Tensor) -> None:
        """Add every entry of ``chunk`` (the next rows of the tensor)."""
        if chunk.numel() == 0:
            return
        flat = chunk.reshape(-1).to(torch.float64, copy=True)
        flat[:1] += self._total  # total + first entry (addition commutes), then the same scan as before
        self._total = torch.cumsum(flat, 0)[-1:]

    @property
    def value(self) -> float:
        return float(self._total[0])
