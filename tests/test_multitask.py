"""Multi-task patching: joint, sequential, parallel; parallel with one task is single-task PAINT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from paint.evaluation.results import ResultsStore
from paint.selection import SelectionConfig
from paint.train.finetune import FinetuneConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FT = dict(epochs=1, lr=3e-3, batch_size=32, warmup_steps=0, weight_decay=0.0, max_steps=4, seed=0, cpu=True)


def _colour_images(n, size, seed, palette):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(palette), n)
    base = np.asarray(palette, dtype=np.float32)
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


def _prepared(bundle, name, role, classnames, palette, seed):
    from paint.models.heads import zeroshot_head
    from paint.pipeline.pool import PoolTask

    size = bundle.spec.crop
    images, labels = {}, {}
    for i, split in enumerate(("train", "val", "test")):
        images[split], labels[split] = _colour_images((64, 32, 32)[i], size, seed + i, palette)
    head = zeroshot_head(bundle, classnames, ["a photo of the {}."])
    return PoolTask(
        name,
        role,
        tuple(classnames),
        ("a photo of the {}.",),
        images,
        labels,
        {s: f"{name}/{s}" for s in images},
        head,
        {},
    )


@pytest.fixture()
def ctx(tiny_clip_dir, tmp_path):
    from paint.models.clip import load_clip
    from paint.pipeline.multitask import MultitaskRun
    from paint.pipeline.pool import TaskPool

    bundle = load_clip(str(tiny_clip_dir))
    tasks = [
        _prepared(bundle, "rgb", "patch", ["red", "green", "blue"], [[200, 30, 30], [30, 200, 30], [30, 30, 200]], 0),
        _prepared(bundle, "cmy", "patch", ["cat", "dog"], [[30, 200, 200], [200, 200, 30]], 10),
        _prepared(bundle, "sup", "support", ["circle", "square"], [[90, 90, 90], [160, 160, 160]], 20),
    ]
    theta_zs = {k: v.clone() for k, v in bundle.image_tower_state().items()}
    selection = SelectionConfig(strategy="grid", objective="mean_accuracy", alphas=[0.0, 0.5, 1.0], budget=3)
    pool = TaskPool(bundle.model, bundle.spec, tasks, ResultsStore(tmp_path / "results.jsonl"), 64)
    return MultitaskRun(pool, theta_zs, selection, FinetuneConfig(**FT), tmp_path, False, "test")


def test_three_modes_and_comparison(ctx):
    from paint.pipeline.multitask import comparison_markdown, comparison_rows, run_mode

    results = {m: run_mode(ctx, m) for m in ("joint", "sequential", "parallel")}
    assert len(results["joint"].alphas) == 1 and results["joint"].n_finetunes == 1
    assert len(results["sequential"].alphas) == 2 and len(results["sequential"].choices) == 2
    assert len(results["parallel"].alphas) == 2 and results["parallel"].n_finetunes == 2
    for r in results.values():
        assert all(0.0 <= a <= 1.0 for a in r.alphas)
        assert all(s.n_model_evals <= 3 for s in r.choices)
        assert set(r.theta) == set(ctx.theta_zs)
    # Sequential step 2 starts from step 1's patch: its search was on tasks {rgb, cmy}.
    assert set(results["sequential"].choices[1].sweep[0]["val"]) == {"rgb", "cmy", "sup"}
    rows = comparison_rows(ctx, list(results.values()))
    assert [r["mode"] for r in rows] == ["zero-shot", "joint", "sequential", "parallel"]
    table = comparison_markdown(rows, ctx.patch, ctx.support)
    assert table.count("\n") == 5 and "worst support drop" in table


def test_parallel_merge_matches_coordinate_lines(ctx):
    from paint.pipeline.combine import parallel_line, parallel_merge

    g = torch.Generator().manual_seed(0)
    thetas = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in ctx.theta_zs.items()} for _ in range(2)]
    base, end = parallel_line(ctx.theta_zs, thetas, [0.0, 0.0], 1)
    assert base is ctx.theta_zs and end is thetas[1]  # exact line when the other alphas are 0
    base, end = parallel_line(ctx.theta_zs, thetas, [0.3, 0.0], 1)
    merged = parallel_merge(ctx.theta_zs, thetas, [0.3, 0.6])
    from paint.evaluation.line import line_point

    point = line_point(base, end, 0.6)
    for k in merged:
        torch.testing.assert_close(point[k], merged[k], rtol=0, atol=1e-6)


def test_parallel_with_one_task_equals_single_task_patching(tiny_clip_dir, tmp_path):
    """`paint multitask` in parallel mode on one task == `paint patch`: same alpha, same weights."""
    from paint.config import parse_config
    from paint.pipeline.multitask import MultitaskConfig, run_multitask
    from paint.pipeline.patch import PatchConfig, run_patch

    common = {
        "model": str(tiny_clip_dir),
        "patch_tasks": ["digits"],
        "device": "cpu",
        "eval_batch_size": 128,
        "finetune": {**FT, "lr": 1e-2, "batch_size": 64, "max_steps": 6},
    }
    single = run_patch(
        parse_config(
            PatchConfig,
            {
                **common,
                "output_dir": str(tmp_path / "single"),
                "selection": {"alphas": [0.0, 0.3, 0.6, 1.0], "objective": "mean_accuracy"},
            },
        )
    )
    search = {"strategy": "grid", "objective": "mean_accuracy", "alphas": [0.0, 0.3, 0.6, 1.0]}
    multi = run_multitask(
        parse_config(
            MultitaskConfig,
            {**common, "output_dir": str(tmp_path / "multi"), "modes": ["parallel"], "selection": search},
        )
    )
    assert multi["modes"]["parallel"]["alphas"] == [single["alpha"]]
    assert single["alpha"] > 0  # fine-tuning helped, so the equality is not the trivial alpha 0
    # The same validation accuracies along the line.
    line = multi["modes"]["parallel"]["choices"][0]["sweep"]
    multi_val = {p["alpha"]: p["val"]["digits"] for p in line}
    single_val = {p["alpha"]: p["val"]["digits"] for p in single["sweep"]}  # raced: the points read in full
    assert {0.0, 1.0, single["alpha"]} <= single_val.keys() <= multi_val.keys()
    assert all(multi_val[a] == v for a, v in single_val.items())
    a = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "multi" / "parallel" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "multi" / "comparison.md").is_file() and (tmp_path / "multi" / "config.yaml").is_file()

    # `paint metrics` on the single-task run (reusing it here keeps the suite fast): CKA on digits.
    from paint.cli import main

    assert main(["metrics", str(tmp_path / "single")]) == 0
    saved = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert 0.0 < saved["cka"]["digits"] <= 1.0 and saved["distance"] > 0
    assert "gradient_similarity" not in saved  # the run has no support task


def test_a_fine_tune_is_made_once_per_run_whatever_the_mode(ctx, monkeypatch):
    """Sequential step 0 and parallel's first fine-tune are one computation: made once, shared."""
    import paint.pipeline.multitask as mt

    calls = []
    real = mt.finetune_tower

    def counting(pool, theta_start, names, *args, **kwargs):
        calls.append(tuple(names))
        return real(pool, theta_start, names, *args, **kwargs)

    monkeypatch.setattr(mt, "finetune_tower", counting)
    seq = mt.run_mode(ctx, "sequential")
    par = mt.run_mode(ctx, "parallel")
    # sequential: rgb from theta_zs, cmy from the rgb patch; parallel: rgb (shared) and cmy from theta_zs.
    assert calls == [("rgb",), ("cmy",), ("cmy",)]
    assert seq.n_finetunes == par.n_finetunes == 2  # each mode still counts the fine-tunes it needs
    theta_rgb = ctx.finetune_from(ctx.theta_zs, ["rgb"], "any/tag")
    assert len(calls) == 3 and theta_rgb is ctx.finetuned[(mt.state_id(ctx.theta_zs), ("rgb",))]


def test_multitask_over_seeds_compares_modes_with_paired_intervals(tiny_clip_dir, tmp_path):
    import yaml

    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits", "colours"],
        "support_tasks": ["shapes"],
        "modes": ["joint", "parallel"],
        "finetune": {**{k: v for k, v in FT.items() if k != "cpu"}, "max_steps": 2},
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "save_models": False,
        "seeds": [0, 1, 2],
        "reference": "parallel",
        "threads": 1,
    }
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["multitask", str(path)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "comparison.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["reference"] == "parallel"
    per_seed = [json.loads((run / f"seed-{s}" / "comparison.json").read_text()) for s in (0, 1, 2)]
    joint, parallel = summary["modes"]
    assert (joint["label"], parallel["label"]) == ("joint", "parallel") and "vs_reference" not in parallel
    rows = {m: [next(r for r in p["comparison"] if r["mode"] == m) for p in per_seed] for m in ("joint", "parallel")}
    diff = joint["vs_reference"]["patch"]
    expected = np.mean([100 * (a["patch_mean"] - b["patch_mean"]) for a, b in zip(rows["joint"], rows["parallel"])])
    assert diff["mean"] == pytest.approx(expected, abs=1e-3) and diff["low"] <= diff["mean"] <= diff["high"]
    assert joint["bound_on_test"]["of"] == 3
    assert joint["bound_on_test"]["held"] == sum(r["bound_on_test"]["holds"] for r in rows["joint"])
    assert joint["patch"]["seeds"]["n"] == 3 and joint["per_task"]["digits"]["n"] == 3
    table = (run / "comparison.md").read_text()
    assert "patch vs parallel" in table and "| joint |" in table and "fine-tunes" in table
