"""Hardening of merges: exact chunked trims, every method bit-identical in tiny chunks, hashing while
streaming, truncated inputs and invalid base files refused up front, consistent --overwrite."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from paint.cli import main
from paint.errors import PaintError
from paint.pipeline.merge import MergeConfig, run_merge
from paint.weights import io, stream, writer
from paint.weights import sparsify as S
from paint.weights.methods import METHODS, get_method
from paint.weights.stream import merge_checkpoints, merge_state_dicts

PARAMS = {
    "linear": {},
    "task_arithmetic": {"scaling": 0.6, "normalize": True},
    "ties": {"density": 0.3, "scaling": 0.9},
    "dare_task_arithmetic": {"drop_rate": 0.4, "seed": 3},
    "dare_ties": {"drop_rate": 0.5, "seed": 5, "normalize": True},
    "model_stock": {},
    "iso_c": {"scaling": 0.8},
    "iso_cts": {"common_space_fraction": 0.5, "scaling": 1.2},
    "tsv_m": {"scaling": 0.9, "rank_fraction": 0.5},
}


@pytest.fixture(scope="module")
def sds():
    g = torch.Generator().manual_seed(0)
    base = {
        "emb.weight": torch.randn(37, 16, generator=g),
        "bias": torch.randn(300, generator=g),  # 1-D: chunks of single entries
        "half": torch.randn(9, 8, generator=g).half(),
        "ids": torch.arange(5),
    }
    models = [
        {
            k: v + 0.1 * torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
            for k, v in base.items()
        }
        for _ in range(3)
    ]
    return base, models


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].needs_data])  # regmean: test_regmean.py
def test_every_method_is_bit_identical_in_tiny_chunks(sds, method, held, monkeypatch):
    """A 24-byte chunk cuts every tensor into many row chunks (1-D ones into single entries).

    ``held``: a first pass slices each input's tensor read once; otherwise it re-reads every chunk.
    """
    monkeypatch.setattr(stream, "HELD_BYTES", stream.HELD_BYTES if held else 0)
    base, models = sds
    weights = None if method == "model_stock" else [0.5, -0.25, 1.0] if "arithmetic" in method else [0.3, 0.5, 0.2]
    kw = {"method": method, "weights": weights, "params": PARAMS[method]}
    whole = merge_state_dicts(base, models, chunk_bytes=1 << 30, **kw)
    chunked = merge_state_dicts(base, models, chunk_bytes=24, **kw)
    for k in base:
        assert torch.equal(whole[k], chunked[k]), k
        # and the registry's whole-tensor merge is the same computation
        if base[k].is_floating_point():
            m = get_method(method)
            direct = m.fn(base[k], [x[k] for x in models], weights or [1.0] * 3, m.parse_params(PARAMS[method]), k)
            assert torch.equal(direct, whole[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_largest_magnitude_is_exact_with_ties_and_chunks(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=g, dtype=dtype)
    x[::7] = 0.5  # many ties, some of them at the threshold
    x[::11] = -0.5
    x[3] = 0.0
    chunks = list(x.split(13))
    for density in (0.01, 0.2, 0.33, 0.9):
        k = S.keep_count(density, x.numel())
        value, ties = S.kth_largest_magnitude(lambda: chunks, density)
        ranked = x.abs().sort(descending=True).values
        assert value.dtype == dtype and value.item() == ranked[k - 1].item()
        assert ties == k - int((x.abs() > value).sum())
        trim = S.MagnitudeTrim(value, ties)
        trimmed = torch.cat([trim(c) for c in chunks])
        assert int((trimmed != 0).sum()) == min(k, int((x != 0).sum()))  # exactly k kept (mergekit's count)
        assert torch.equal(trimmed, S.trim_magnitude(x, density))  # chunked == whole
        kept_ties = (trimmed.abs() == value).nonzero().flatten()
        assert torch.equal(kept_ties, (x.abs() == value).nonzero().flatten()[:ties])  # first ties in flat order
    assert S.kth_largest_magnitude(lambda: chunks, 1.0) is None
    assert S.keep_count(0.2, 21) == 4 and S.keep_count(0.001, 10) == 1  # int(), at least one, as mergekit


@pytest.mark.parametrize("method", ["ties", "linear"])
def test_inputs_are_hashed_once_while_streaming(tmp_path, sds, monkeypatch, method):
    """The base listed again as a model is hashed once; linear never reads the base (hashed on a second thread)."""
    base, models = sds
    b = writer.save_state_dict(base, tmp_path / "base")
    m = writer.save_state_dict(models[0], tmp_path / "m", max_shard_bytes=600)
    other = writer.save_state_dict(models[1], tmp_path / "other")
    files = [b / "model.safetensors", other / "model.safetensors", *m.glob("*.safetensors")]
    expected = {str(p): io.file_sha256(p) for p in files}
    # No file is read a second time for its hash: the hashes come from the merge's own reads.
    monkeypatch.setattr("paint.pipeline.merge_files.file_sha256", lambda p: pytest.fail(f"{p} hashed by a second read"))
    base_dir = b if method == "ties" else other
    models_cfg = [{"path": str(b)}, {"path": str(m)}]
    cfg = MergeConfig(base=str(base_dir), models=models_cfg, method=method, output=str(tmp_path / "o"))
    summary = run_merge(cfg, progress=False)
    rows = summary["input_hashes"]
    assert [r["input"] for r in rows] == ["base", "model 0"] + ["model 1"] * len(list(m.glob("*.safetensors")))
    assert rows[0]["file"] == str(base_dir / "model.safetensors")
    assert all(r["sha256"] == expected[r["file"]] for r in rows)


def test_truncated_input_is_refused_before_merging(tmp_path, sds):
    base, models = sds
    b = writer.save_state_dict(base, tmp_path / "base")
    m = writer.save_state_dict(models[0], tmp_path / "m")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[:-100])
    cfg = MergeConfig(base=str(b), models=[{"path": str(m)}], output=str(tmp_path / "o"))
    with pytest.raises(PaintError, match=r"model.safetensors is truncated"):
        run_merge(cfg, progress=False)
    with pytest.raises(PaintError, match="is truncated"):
        merge_checkpoints(b, [m], tmp_path / "o2", progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_base_with_invalid_config_json_is_refused(tmp_path, sds, capsys):
    base, models = sds
    b = writer.save_state_dict(base, tmp_path / "base")
    m = writer.save_state_dict(models[0], tmp_path / "m")
    (b / "config.json").write_text('{"model_type": "clip",')
    cfg = {"base": str(b), "models": [{"path": str(m)}], "output": str(tmp_path / "o")}
    (tmp_path / "merge.yaml").write_text(json.dumps(cfg))
    assert main(["merge", str(tmp_path / "merge.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config.json is not valid JSON" in err and err.count("\n") == 1 and not (tmp_path / "o").exists()
    (b / "config.json").write_text("[1, 2]")
    with pytest.raises(PaintError, match=r"base file .*config.json is not a JSON object"):
        run_merge(MergeConfig(**cfg), progress=False)


def test_interpolate_refuses_an_existing_output_without_overwrite(tiny_clip_dir, tiny_clip_dir_b, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["interpolate", "--zeroshot", str(tiny_clip_dir), "--finetuned", str(tiny_clip_dir_b), "--alpha", "0.5",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty; pass --overwrite" in err and err.count("\n") == 1
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    shutil.rmtree(out)
    assert main(args) == 0  # a new directory needs no flag
