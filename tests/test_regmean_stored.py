"""``paint merge`` with RegMean: Gram matrices written to disk per model and read one at a time, the
output bit-identical to the in-memory merge, nothing left behind, and no training stack imported."""

from __future__ import annotations

import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

import paint.pipeline.merge as merge_module
import paint.pipeline.regmean as regmean_module
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.pipeline.merge import MergeConfig, run_merge
from paint.pipeline.regmean import model_grams
from paint.weights import io
from paint.weights.io import LazyStateDict
from paint.weights.methods import get_method
from paint.weights.regmean import RegMeanParams, with_grams
from paint.weights.stream import merge_checkpoints
from tests.test_regmean import PARAMS, _finetuned

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASKS = [{"name": "digits"}, {"name": "digits", "split_seed": 1}, {"name": "digits", "split_seed": 2}]


@pytest.fixture(scope="module")
def three_fts(tiny_clip_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("regmean-stored")
    return [_finetuned(tiny_clip_dir, root / f"ft{i}", seed=10 + i) for i in range(3)]


def _config(base: Path, fts: list[Path], out: Path) -> MergeConfig:
    models = [{"path": str(p), "task": t} for p, t in zip(fts, TASKS)]
    return MergeConfig(base=str(base), models=models, method="regmean", parameters=PARAMS, output=str(out))


def test_importing_paint_merge_imports_no_training_stack():
    """``paint merge`` pays for neither accelerate nor the task pool (paint.pipeline.pool) nor paint.train."""
    code = (
        "import sys, paint.pipeline.merge\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'accelerate' "
        "or m == 'paint.pipeline.pool' or m.startswith('paint.train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_stored_grams_merge_is_bit_identical_to_the_in_memory_merge(tiny_clip_dir, three_fts, tmp_path):
    out = tmp_path / "merged"
    run_merge(_config(tiny_clip_dir, three_fts, out), progress=False)
    # The in-memory path (every model's Gram matrices kept, as paint merge did before): same streamed merge.
    readers = [io.CheckpointReader(p) for p in three_fts]
    sets = model_grams(str(tiny_clip_dir), list(zip(readers, [TaskSpec(**t) for t in TASKS])), RegMeanParams(**PARAMS))
    method = with_grams(get_method("regmean"), [s.grams for s in sets])
    merge_checkpoints(tiny_clip_dir, three_fts, tmp_path / "memory", method, params=PARAMS, progress=False)
    got, want = io.CheckpointReader(out), io.CheckpointReader(tmp_path / "memory")
    assert got.keys() == want.keys()
    assert all(torch.equal(got.get(k), want.get(k)) for k in want.keys())


def test_one_models_grams_in_memory_each_read_once_and_nothing_left(tiny_clip_dir, three_fts, tmp_path, monkeypatch):
    out = tmp_path / "models" / "merged"
    alive: list[weakref.ref] = []
    at_each_model: list[int] = []
    real_gather = regmean_module.gather_grams

    def gather(*args, **kwargs):
        at_each_model.append(sum(r() is not None for r in alive))  # earlier models' Gram matrices still alive
        result = real_gather(*args, **kwargs)
        alive.extend(weakref.ref(g) for g in result.grams.values())
        return result

    reads: list[str] = []
    real_getitem = LazyStateDict.__getitem__

    def counted(self, key):
        reads.append(f"{self.reader.path.name}/{key}")
        return real_getitem(self, key)

    seen: list[list[str]] = []
    real_stream = merge_module.stream_merge_into

    def stream(*args, **kwargs):
        seen.append(sorted(p.name for p in out.parent.glob(".paint-tmp.*/regmean-grams/*")))
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(regmean_module, "gather_grams", gather)
    monkeypatch.setattr(LazyStateDict, "__getitem__", counted)
    monkeypatch.setattr(merge_module, "stream_merge_into", stream)
    run_merge(_config(tiny_clip_dir, three_fts, out), progress=False)
    assert at_each_model == [0, 0, 0]  # each model's were on disk and freed before the next forward pass
    assert seen == [["grams-0.safetensors", "grams-1.safetensors", "grams-2.safetensors"]]  # beside the output
    linears = 13  # 2 layers x (q, k, v, out, fc1, fc2) and the projection
    assert len(reads) == 3 * linears and len(set(reads)) == len(reads)  # each matrix read once: `in` reads none
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]  # the Gram files went with the temporaries


def test_a_failed_merge_leaves_no_gram_files(tiny_clip_dir, three_fts, tmp_path, monkeypatch):
    out = tmp_path / "models" / "merged"

    def fail(*args, **kwargs):
        assert len(list(out.parent.glob(".paint-tmp.*/regmean-grams/grams-*.safetensors"))) == 3
        raise PaintError("disk full (simulated)")

    monkeypatch.setattr(merge_module, "stream_merge_into", fail)
    with pytest.raises(PaintError, match="simulated"):
        run_merge(_config(tiny_clip_dir, three_fts, out), progress=False)
    assert list(out.parent.iterdir()) == []


def test_a_non_finite_gram_matrix_is_one_line_naming_the_model(tiny_clip_dir, three_fts, tmp_path, monkeypatch):
    out = tmp_path / "models" / "merged"
    real_gather = regmean_module.gather_grams
    calls = []

    def gather(*args, **kwargs):
        result = real_gather(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # model 1's forward pass overflowed
            bad = result.grams["visual_projection.weight"].clone()  # an inference tensor: changed in a copy
            bad[0, 0] = float("inf")
            result.grams["visual_projection.weight"] = bad
        return result

    monkeypatch.setattr(regmean_module, "gather_grams", gather)
    with pytest.raises(PaintError, match=r"regmean: model 1 \(digits\): refusing to write tensor") as e:
        run_merge(_config(tiny_clip_dir, three_fts, out), progress=False)
    assert "\n" not in str(e.value) and len(calls) == 2
    assert list(out.parent.iterdir()) == []
