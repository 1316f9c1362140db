"""paint's TIES, DARE and task arithmetic reproduce mergekit's outputs (fixture made by mergekit itself).

``tests/fixtures/mergekit/make_fixture.py`` ran mergekit's registered merge methods on tiny
random tensors and stored inputs and outputs; here paint merges the same inputs with the
same settings, whole and in tiny row chunks. DARE's masks match because the fixture seeded
mergekit's global generator with the per-(seed, tensor, model) seed that paint uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from paint.weights.stream import merge_state_dicts

FIXTURE = Path(__file__).parent / "fixtures" / "mergekit" / "ties_dare.safetensors"
PAINT_NAME = {"ties": "ties", "dare_ties": "dare_ties", "dare_linear": "dare_task_arithmetic",
              "task_arithmetic": "task_arithmetic"}  # fmt: skip


def _load() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        cases = json.loads(f.metadata()["cases"])
    return tensors, cases


def _paint_params(method: str, mk: dict, seed: int | None) -> dict:
    """mergekit parameters -> paint's (density of kept entries -> drop rate, lambda -> scaling)."""
    params: dict = {"scaling": mk.get("lambda", 1.0)}
    if "normalize" in mk:
        params["normalize"] = mk["normalize"]
    if method == "ties":
        params["density"] = mk["density"]
    elif method.startswith("dare"):
        params.update(drop_rate=1.0 - mk["density"], seed=seed, rescale="l1" if mk.get("rescale", True) else "none")
    return params


TENSORS, CASES = _load()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_bytes", [1 << 30, 64])
def test_paint_matches_mergekit(case, chunk_bytes):
    spec = CASES[case]
    names = sorted({k.split("/", 1)[1] for k in TENSORS})
    base = {n: TENSORS[f"base/{n}"] for n in names}
    models = [{n: TENSORS[f"model{i}/{n}"] for n in names} for i in range(3)]
    out = merge_state_dicts(
        base,
        models,
        PAINT_NAME[spec["method"]],
        weights=spec["weights"],
        params=_paint_params(spec["method"], spec["parameters"], spec["seed"]),
        chunk_bytes=chunk_bytes,
    )
    for n in names:
        expected = TENSORS[f"{case}/{n}"]
        assert not torch.equal(expected, base[n]), (case, n)  # the case merges something
        torch.testing.assert_close(out[n], expected, atol=1e-6, rtol=0, msg=f"{case} {n}")


def test_fixture_is_small_and_ties_trims():
    assert FIXTURE.stat().st_size < 200_000
    # density 0.2 keeps int(0.2 * n) entries of each task vector: a dense merge would differ from TIES
    n = "layers.0.mlp.weight"
    dense = merge_state_dicts({n: TENSORS[f"base/{n}"]}, [{n: TENSORS[f"model{i}/{n}"]} for i in range(3)], "ties",
                              params={"density": 1.0})  # fmt: skip
    assert (dense[n] - TENSORS[f"ties_default/{n}"]).abs().max() > 1e-3
