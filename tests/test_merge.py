"""Streamed merges: equal to the in-memory twin bit for bit, validated up front, HF output with model card, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from paint.cli import main
from paint.config import load_config
from paint.errors import PaintError
from paint.pipeline.merge import CONFIG_NAME, MergeConfig, run_merge
from paint.weights import io, writer
from paint.weights.methods import METHODS
from paint.weights.ops import interpolate
from paint.weights.reads import InputReads
from paint.weights.stream import merge_checkpoints, merge_state_dicts

PARAMS = {
    "linear": {},
    "task_arithmetic": {"scaling": 0.6},
    "ties": {"density": 0.3, "scaling": 0.9},
    "dare_task_arithmetic": {"drop_rate": 0.4, "seed": 3},
    "dare_ties": {"drop_rate": 0.5, "seed": 5},
    "model_stock": {},
    "iso_c": {"scaling": 0.8},
    "iso_cts": {"common_space_fraction": 0.5, "scaling": 1.2},
    "tsv_m": {"scaling": 0.9},
}


def _perturb(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + 0.1 * torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v.clone())
        for k, v in sd.items()
    }


@pytest.fixture(scope="module")
def tiny_sds():
    g = torch.Generator().manual_seed(0)
    base = {
        "emb.weight": torch.randn(64, 16, generator=g),  # 4 KB: several row chunks at chunk_bytes=1000
        "layer.weight": torch.randn(16, 16, generator=g),
        "layer.bias": torch.randn(16, generator=g).half(),
        "scale": torch.tensor(2.6),
        "position_ids": torch.arange(8),
        "flags": torch.tensor([True, False]),
    }
    return base, _perturb(base, 1), _perturb(base, 2)


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """A tiny HF CLIP base (weights, config, processor file) and two fine-tuned variants."""
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("clip")
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config)
    model.save_pretrained(root / "base")
    (root / "base" / "preprocessor_config.json").write_text('{"do_resize": true}\n')
    sd = io.load_state_dict(root / "base")
    for i in (1, 2):
        writer.save_state_dict(_perturb(sd, i), root / f"ft{i}", max_shard_bytes=20_000 if i == 2 else "2GB")
    return root


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].needs_data])  # regmean: test_regmean.py
def test_streamed_equals_in_memory_bit_for_bit(tmp_path, tiny_sds, method):
    base, m1, m2 = tiny_sds
    paths = [writer.save_state_dict(sd, tmp_path / f"in{i}", max_shard_bytes=1500) for i, sd in enumerate(tiny_sds)]
    weights = None if method == "model_stock" else [0.7, -0.3] if method == "task_arithmetic" else [0.4, 0.6]
    kwargs = {"method": method, "weights": weights, "params": PARAMS[method], "chunk_bytes": 1000}
    stats = merge_checkpoints(paths[0], paths[1:], tmp_path / "out", max_shard_bytes=2000, progress=False, **kwargs)
    streamed = io.load_state_dict(tmp_path / "out")
    in_memory = merge_state_dicts(base, [m1, m2], **kwargs)
    assert list(streamed) == list(base)
    for k in base:
        assert streamed[k].dtype == base[k].dtype and torch.equal(streamed[k], in_memory[k]), k
    for k in ("position_ids", "flags"):  # integer and boolean tensors come from the base
        assert torch.equal(streamed[k], base[k])
    assert not torch.equal(streamed["layer.weight"], base["layer.weight"])
    assert (stats.merged, stats.copied, stats.tensors) == (4, 2, 6)
    assert len(stats.files) > 2 and "model.safetensors.index.json" in stats.files


def test_linear_merge_is_paint_interpolation(tiny_sds):
    base, _, ft = tiny_sds
    merged = merge_state_dicts(base, [base, ft], "linear", weights=[0.7, 0.3])
    expected = interpolate(base, ft, 0.3)
    assert all(torch.equal(merged[k], expected[k]) for k in base)


def test_include_patterns_copy_other_keys_from_base(tiny_sds):
    base, m1, m2 = tiny_sds
    merged = merge_state_dicts(base, [m1, m2], "task_arithmetic", include=["layer.*"])
    assert torch.equal(merged["emb.weight"], base["emb.weight"])
    assert not torch.equal(merged["layer.weight"], base["layer.weight"])
    assert merged["emb.weight"].data_ptr() != base["emb.weight"].data_ptr()  # a copy, never an alias


def test_sharded_and_single_file_inputs_give_identical_outputs(tmp_path, tiny_sds):
    base, m1, m2 = tiny_sds
    single = [writer.save_state_dict(sd, tmp_path / f"s{i}.safetensors") for i, sd in enumerate(tiny_sds)]
    sharded = [writer.save_state_dict(sd, tmp_path / f"d{i}", max_shard_bytes=700) for i, sd in enumerate(tiny_sds)]
    assert len(list(sharded[0].glob("*.safetensors"))) > 2
    for name, paths in (("a", single), ("b", sharded)):
        merge_checkpoints(paths[0], paths[1:], tmp_path / name, "ties", params={"density": 0.5}, progress=False)
    a, b = io.load_state_dict(tmp_path / "a"), io.load_state_dict(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in base) and list(a) == list(b)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["model.safetensors"]


def test_task_arithmetic_coefficient_zero_returns_base(tmp_path, tiny_sds):
    base, m1, m2 = tiny_sds
    paths = [writer.save_state_dict(sd, tmp_path / f"in{i}") for i, sd in enumerate(tiny_sds)]
    merge_checkpoints(paths[0], paths[1:], tmp_path / "out", "task_arithmetic", weights=[0.0, 0.0], progress=False)
    out = io.load_state_dict(tmp_path / "out")
    assert all(torch.equal(out[k], base[k]) for k in base)


def test_mismatches_name_the_tensor_before_any_data_is_read(tmp_path, tiny_sds, monkeypatch):
    base, m1, _ = tiny_sds
    b = writer.save_state_dict(base, tmp_path / "base")
    bad_shape = writer.save_state_dict({**m1, "layer.weight": torch.zeros(16, 15)}, tmp_path / "shape")
    bad_dtype = writer.save_state_dict({**m1, "layer.bias": m1["layer.bias"].float()}, tmp_path / "dtype")
    missing = writer.save_state_dict({k: v for k, v in m1.items() if k != "scale"}, tmp_path / "missing")
    reads = []
    monkeypatch.setattr(io.CheckpointReader, "get", lambda self, key: reads.append(key))
    monkeypatch.setattr(io.CheckpointReader, "get_rows", lambda self, key, a, z: reads.append(key))
    monkeypatch.setattr(InputReads, "read", lambda self, i, key, a=None, z=None: reads.append(key))
    cases = [(bad_shape, r"'layer.weight' has shape \(16, 16\)"), (bad_dtype, "'layer.bias' has dtype"),
             (missing, "'scale' is in the base model but not")]  # fmt: skip
    for model, pattern in cases:
        cfg = MergeConfig(base=str(b), models=[{"path": str(model)}], output=str(tmp_path / "out"))
        with pytest.raises(PaintError, match=pattern):
            run_merge(cfg, progress=False)
    cfg = MergeConfig(
        base=str(b), models=[{"path": str(b)}], method="ties", parameters={"density": 2}, output=str(tmp_path / "o")
    )
    with pytest.raises(PaintError, match="density"):
        run_merge(cfg, progress=False)
    with pytest.raises(PaintError, match="does not exist"):
        run_merge(MergeConfig(base=str(b), models=[{"path": str(tmp_path / "nope")}], output=str(tmp_path / "o")))
    assert reads == [] and not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_run_merge_writes_hf_checkpoint_with_model_card(clip_dirs, tmp_path):
    from transformers import CLIPModel

    out = tmp_path / "merged"
    cfg = MergeConfig(
        base=str(clip_dirs / "base"),
        models=[{"path": str(clip_dirs / "ft1"), "weight": 0.5}, {"path": str(clip_dirs / "ft2"), "weight": 0.5}],
        method="ties",
        parameters={"density": 0.5},
        output=str(out),
        max_shard_size="30KB",
    )
    summary = run_merge(cfg, evaluate=lambda sd: 0.75, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "preprocessor_config.json", "README.md", CONFIG_NAME, "merge_summary.json"} <= names
    assert "model.safetensors.index.json" in names and summary["stats"]["merged"] > 0
    card = (out / "README.md").read_text()
    hashes = summary["input_hashes"]
    assert len(hashes) == 1 + 1 + len(list((clip_dirs / "ft2").glob("*.safetensors")))
    assert all(h["sha256"] in card for h in hashes)
    assert hashes[0]["sha256"] == io.file_sha256(clip_dirs / "base" / "model.safetensors")
    assert "2306.01708" in card and '"val_accuracy": 0.75' in card and "density: 0.5" in card
    resolved = load_config(MergeConfig, out / CONFIG_NAME)  # the resolved config round-trips
    assert resolved == cfg.model_copy(update={"parameters": {"density": 0.5, "scaling": 1.0, "normalize": True}})
    model = CLIPModel.from_pretrained(out)
    expected = merge_state_dicts(
        io.load_state_dict(clip_dirs / "base"),
        [io.load_state_dict(clip_dirs / f"ft{i}") for i in (1, 2)],
        "ties",
        weights=[0.5, 0.5],
        params={"density": 0.5},
    )
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    with pytest.raises(PaintError, match="exists and is not empty"):
        run_merge(cfg, progress=False)


def test_greedy_soup_through_run_merge(clip_dirs, tmp_path):
    cfg = MergeConfig(
        base=str(clip_dirs / "base"),
        models=[{"path": str(clip_dirs / n)} for n in ("ft1", "ft2", "base")],
        method="greedy_soup",
        output=str(tmp_path / "soup"),
    )
    with pytest.raises(PaintError, match="needs an evaluation"):
        run_merge(cfg, progress=False)
    target = io.load_state_dict(clip_dirs / "ft2")["logit_scale"]

    def evaluate(sd):  # best when logit_scale matches ft2's
        return -abs(float(sd["logit_scale"] - target))

    summary = run_merge(cfg, evaluate=evaluate, progress=False)
    assert summary["evaluation"]["ingredients"][0] == str(clip_dirs / "ft2")
    assert str(clip_dirs / "ft2") in (tmp_path / "soup" / "README.md").read_text()
    assert (tmp_path / "soup" / "config.json").is_file()


def _half_task_vector_config(clip_dirs, out) -> dict:
    """A merge config: the base plus half of ft1's task vector, written to ``out``."""
    return {
        "base": str(clip_dirs / "base"),
        "models": [{"path": str(clip_dirs / "ft1"), "weight": 1.0}],
        "method": "task_arithmetic",
        "parameters": {"scaling": 0.5},
        "output": str(out),
    }


def test_cli_merge_end_to_end_and_bad_config(clip_dirs, tmp_path, capsys):
    cfg = _half_task_vector_config(clip_dirs, tmp_path / "out")
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--no-progress"]) == 0
    assert "merged" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # the same again needs --overwrite
    assert main(["merge", str(path), "--no-progress"]) == 2
    assert main(["merge", str(path), "--no-progress", "--overwrite"]) == 0
    capsys.readouterr()
    for bad in ({**cfg, "method": "soup"}, {**cfg, "parameters": {"scaling": "big"}}, {**cfg, "extra": 1}):
        path.write_text(yaml.safe_dump(bad))
        assert main(["merge", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("paint merge: error:") and err.count("\n") == 1, err


def test_output_may_not_overwrite_an_input(clip_dirs, tmp_path):
    src = tmp_path / "copy"
    shutil.copytree(clip_dirs / "ft1", src)
    cfg = MergeConfig(base=str(clip_dirs / "base"), models=[{"path": str(src)}], output=str(src), overwrite=True)
    with pytest.raises(PaintError, match="would overwrite input"):
        run_merge(cfg, progress=False)


def test_accuracy_evaluator_drives_greedy_soup_on_clip(clip_dirs, tmp_path):
    from transformers import CLIPModel

    from paint.data.preprocess import ImageSpec
    from paint.evaluation.results import evaluate_split
    from paint.pipeline.merge import accuracy_evaluator

    model = CLIPModel.from_pretrained(clip_dirs / "base").eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (12,), generator=g).numpy()
    head = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1) * 10
    spec = ImageSpec(resize=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    evaluate = accuracy_evaluator(model, head, images, labels, spec, batch_size=8)
    cfg = MergeConfig(
        base=str(clip_dirs / "base"),
        models=[{"path": str(clip_dirs / n)} for n in ("ft1", "ft2")],
        method="greedy_soup",
        output=str(tmp_path / "soup"),
    )
    summary = run_merge(cfg, evaluate=evaluate, progress=False)
    soup = CLIPModel.from_pretrained(tmp_path / "soup").eval()
    direct = evaluate_split(soup, head, images, labels, spec, batch_size=8)["accuracy"]
    assert summary["evaluation"]["val_accuracy"] == pytest.approx(direct)
    assert 0.0 <= direct <= 1.0 and len(summary["evaluation"]["history"]) == 2


def test_cli_greedy_soup_scores_on_a_task(tiny_clip_dir, tmp_path, capsys):
    """greedy_soup from YAML: each candidate soup is scored on the evaluate_on task's val split."""
    from transformers import CLIPModel

    for i in (1, 2):  # two "fine-tuned" variants of the base
        model = CLIPModel.from_pretrained(tiny_clip_dir)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("vision_model."):
                    p.add_(0.02 * i * torch.randn_like(p))
        model.save_pretrained(tmp_path / f"ft{i}")
    cfg = {
        "base": str(tiny_clip_dir),
        "models": [{"path": str(tmp_path / "ft1")}, {"path": str(tmp_path / "ft2")}],
        "method": "greedy_soup",
        "output": str(tmp_path / "soup"),
        "evaluate_on": {"name": "digits"},
    }
    path = tmp_path / "soup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy of the merge on digits" in out
    summary = json.loads((tmp_path / "soup" / "merge_summary.json").read_text())
    # the kept ingredients, in order, each with the soup's val accuracy once it was added
    kept = summary["evaluation"]["kept"]
    assert f"greedy soup kept {len(kept)} of 2 models" in out
    for i, k in enumerate(kept, 1):
        assert f"  {i}. {k['path']}: {100 * k['val_accuracy']:.1f}%" in out
    assert kept[-1]["val_accuracy"] == summary["evaluation"]["val_accuracy"]
    assert len(summary["evaluation"]["individual"]) == 2
    assert 0.0 <= summary["evaluation"]["val_accuracy"] <= 1.0
    CLIPModel.from_pretrained(tmp_path / "soup")


def test_cli_merge_takes_set_overrides(clip_dirs, tmp_path, capsys):
    cfg = _half_task_vector_config(clip_dirs, tmp_path / "out")
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = [
        "merge",
        str(path),
        "--no-progress",
        "--set",
        "parameters.scaling=0.0",
        "--set",
        f"output={tmp_path / 'o2'}",
    ]
    assert main(argv) == 0
    assert not (tmp_path / "out").exists() and (tmp_path / "o2" / "model.safetensors").is_file()
    from paint.weights.io import load_state_dict

    merged, base = load_state_dict(tmp_path / "o2"), load_state_dict(clip_dirs / "base")
    assert all(torch.equal(merged[k], base[k]) for k in base)  # scaling 0 (from --set) returns the base
    capsys.readouterr()
    assert main(["merge", str(path), "--no-progress", "--set", "parameters.scale=1"]) == 2
    assert "parameters" in capsys.readouterr().err
