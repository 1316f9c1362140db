"""OrderedSum: the same float64 total however a tensor's rows are chunked, and a correct one."""

from __future__ import annotations

import math

import pytest
import torch

from paint.weights.chunks import SUM_BLOCK, OrderedSum


def _total(chunks) -> float:
    s = OrderedSum()
    for c in chunks:
        s.add(c)
    return s.value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_the_total_does_not_depend_on_the_chunking(dtype):
    g = torch.Generator().manual_seed(0)
    rows, width = 5 * SUM_BLOCK // 64 + 7, 64  # 5 blocks and a partial one; rows straddle block edges
    x = (torch.randn(rows, width, generator=g) * torch.rand(rows, width, generator=g) ** 6 * 1e3).to(dtype)
    whole = _total([x])
    for rows_per_chunk in (1, 3, 1000, 1024, 1025, rows):
        assert _total(x.split(rows_per_chunk)) == whole  # bit for bit
    exact = math.fsum(x.double().reshape(-1).tolist())
    assert whole == pytest.approx(exact, rel=1e-12, abs=1e-9)


def test_a_partial_block_is_counted_once_and_reading_the_value_changes_nothing():
    s = OrderedSum()
    s.add(torch.ones(10))
    assert s.value == 10.0 and s.value == 10.0
    s.add(torch.ones(SUM_BLOCK))
    assert s.value == SUM_BLOCK + 10.0
    s.add(torch.empty(0))
    assert s.value == SUM_BLOCK + 10.0
