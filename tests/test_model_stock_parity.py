"""paint's Model Stock reproduces mergekit's ``model_stock`` (fixture made by mergekit itself).

``tests/fixtures/mergekit/make_model_stock_fixture.py`` merged 2, 3 and 5 tiny fine-tunes of one
base with mergekit's registered method (its default: one interpolation ratio per tensor); paint
merges the same inputs, whole and in tiny row chunks (its streamed path: the ratio is gathered in a
first pass over the rows). Where the task vectors point apart (a negative mean cosine) paint clamps
the ratio to [0, 1] and keeps the base, while mergekit extrapolates; the last test pins that choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from paint.weights.stream import merge_state_dicts

FIXTURE = Path(__file__).parent / "fixtures" / "mergekit" / "model_stock.safetensors"


def _load() -> tuple[dict[str, torch.Tensor], dict[str, int], str]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return tensors, json.loads(meta["cases"]), meta["mergekit"]


TENSORS, CASES, MERGEKIT = _load()
NAMES = sorted({k.split("/", 1)[1] for k in TENSORS})


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_bytes", [1 << 30, 64])
def test_paint_model_stock_matches_mergekit(case, chunk_bytes):
    base = {n: TENSORS[f"base/{n}"] for n in NAMES}
    models = [{n: TENSORS[f"model{i}/{n}"] for n in NAMES} for i in range(CASES[case])]
    out = merge_state_dicts(base, models, "model_stock", chunk_bytes=chunk_bytes)
    for n in NAMES:
        expected = TENSORS[f"{case}/{n}"]
        assert not torch.equal(expected, base[n])  # the case moves every tensor: the comparison can fail
        torch.testing.assert_close(out[n], expected, rtol=1e-5, atol=1e-6, msg=f"{case} {n} (mergekit {MERGEKIT})")


def test_opposed_task_vectors_keep_the_base():
    """A negative mean cosine: mergekit's ratio would be negative (moving away from both models); paint's is 0."""
    base = {"w": torch.zeros(4)}
    models = [{"w": torch.tensor([1.0, 0.0, 0.0, 0.0])}, {"w": torch.tensor([-1.0, 0.1, 0.0, 0.0])}]
    out = merge_state_dicts(base, models, "model_stock")
    torch.testing.assert_close(out["w"], base["w"])
