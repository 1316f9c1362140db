"""The scale study (PAINT's RQ2): intervals, its figures, the ladder's names, and the end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from paint.errors import PaintError
from paint.stats import seed_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ config, names, figures


def test_unknown_shipped_model_lists_the_shipped_names(capsys):
    from paint.cli import main
    from paint.models.clip import resolve_model_source

    with pytest.raises(PaintError, match=r"unknown shipped model 'paint:nope'; paint ships: paint:tiny, paint:default"):
        resolve_model_source("paint:nope")
    assert main(["eval", "--model", "paint:nope", "--task", "colours"]) == 2
    assert "unknown shipped model 'paint:nope'" in capsys.readouterr().err


def test_scale_config_defaults_and_one_line_errors():
    from paint.config import parse_config
    from paint.studies.scale import LADDER, ScaleConfig
    from paint.studies.scale_report import model_label, model_labels

    cfg = ScaleConfig()
    assert cfg.models == list(LADDER) == ["paint:tiny", "paint:default", "paint:medium"]
    assert cfg.seed_list == [0, 1, 2]
    assert [t.name for t in cfg.patch_tasks] == ["digits", "counting", "novel-font-digits"]
    assert cfg.selection.rule_name == "constrained-mean" and cfg.selection.epsilon == 1.0
    assert ScaleConfig(seeds=[4, 7]).seed_list == [4, 7]
    assert model_label("paint:tiny") == "paint-tiny" and model_label("/ckpts/clip-vit-b32/") == "clip-vit-b32"
    assert model_labels(["/a/model", "/b/model", "paint:tiny"]) == {
        "/a/model": "model",
        "/b/model": "model-2",
        "paint:tiny": "paint-tiny",
    }
    for data, message in [
        ({"multitask_tasks": ["digits", "shapes"]}, "'shapes' is not one of the patch_tasks"),
        ({"multitask_tasks": ["digits"]}, "needs two or more patching tasks"),
        ({"seeds": 0}, "seeds must be a count >= 1"),
        ({"seeds": [1, 1]}, "without repeats"),
        ({"models": ["paint:tiny", "paint:tiny"]}, "listed twice"),
    ]:
        with pytest.raises(PaintError, match=message):
            parse_config(ScaleConfig, data, "test")


def _cell(seed: float) -> dict:
    """A hand-made cell: two patching tasks, support mean given per point."""
    return {
        "seed": 0,
        "seconds": 60.0,
        "params": {"total": 10, "image_tower": 5},
        "single": {
            "a": {
                "alpha": 0.4,
                "test": {"zeroshot": {"a": 0.5}, "finetuned": {"a": 0.9}, "patched": {"a": 0.8 + seed}},
                "support_mean": {"zeroshot": 0.9, "finetuned": 0.7, "patched": 0.89},
                "cka": {"patch": 0.6, "support": 0.8},
            },
            "b": {
                "alpha": 0.6,
                "test": {"zeroshot": {"b": 0.3}, "finetuned": {"b": 0.7}, "patched": {"b": 0.6}},
                "support_mean": {"zeroshot": 0.9, "finetuned": 0.5, "patched": 0.87},
                "cka": {"patch": 0.4, "support": 0.6},
            },
        },
        "multitask": {
            "zero-shot": {"patch_mean": 0.4, "support_mean": 0.9},
            "joint": {"patch_mean": 0.7, "support_mean": 0.88},
            "parallel": {"patch_mean": 0.75, "support_mean": 0.86},
        },
    }


def test_per_seed_figures_average_the_patching_tasks_by_hand():
    from paint.studies.scale_report import multitask_figures, per_seed_figures, per_task_figures

    f = per_seed_figures(_cell(0.0))
    assert f["zeroshot_patch"] == pytest.approx(40.0) and f["finetuned_patch"] == pytest.approx(80.0)
    assert f["patched_patch"] == pytest.approx(70.0) and f["patched_below_finetuned"] == pytest.approx(10.0)
    assert f["zeroshot_support"] == pytest.approx(90.0) and f["finetuned_support"] == pytest.approx(60.0)
    assert f["support_lost_by_finetuning"] == pytest.approx(30.0)
    assert f["support_lost_by_patching"] == pytest.approx(2.0)
    assert f["alpha"] == pytest.approx(0.5) and f["cka_patch"] == pytest.approx(0.5)
    t = per_task_figures(_cell(0.0))
    assert t["a"]["patched_below_finetuned"] == pytest.approx(10.0) and t["b"]["zeroshot"] == pytest.approx(30.0)
    m = multitask_figures(_cell(0.0))
    assert set(m) == {"joint", "parallel"} and m["parallel"]["rank"] == 1.0 and m["joint"]["rank"] == 2.0
    tied = _cell(0.0)
    tied["multitask"]["joint"]["patch_mean"] = 0.75
    assert {k: v["rank"] for k, v in multitask_figures(tied).items()} == {"joint": 1.0, "parallel": 1.0}


def test_aggregate_gives_intervals_over_seeds_and_the_figure(tmp_path):
    from paint.studies.scale import ScaleConfig, aggregate, plot_scale, scale_markdown

    cfg = ScaleConfig(models=["m1"], seeds=3, multitask_tasks=[])
    agg = aggregate(cfg, {"m1": [_cell(0.0), _cell(0.02), _cell(0.04)]})
    iv = agg["m1"]["summary"]["patched_patch"]
    assert iv.n == 3 and iv.mean == pytest.approx(71.0)
    assert iv.half == pytest.approx(seed_interval([70.0, 71.0, 72.0]).half)
    md = scale_markdown(cfg, agg)
    assert "| `m1` |" in md and "71.0 ± 2.5" in md and "per model (all seeds): `m1` 3." in md
    assert plot_scale(agg, tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ end to end


def _folder_task(root, palette, seed, n=16):
    rng = np.random.default_rng(seed)
    for name, rgb in palette.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            arr = (np.asarray(rgb, np.float32) + rng.normal(0, 25, (16, 16, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return {"name": root.name, "source": "folder", "path": str(root), "templates": ["a photo of the {}."]}


def test_paint_scale_end_to_end_resume_and_growth(tiny_clip_dir, tiny_clip_dir_b, tmp_path, capsys):
    from paint.cli import main

    rgb = _folder_task(tmp_path / "rgb", {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}, 0)
    cmy = _folder_task(tmp_path / "cmy", {"cat": (30, 200, 200), "dog": (200, 200, 30)}, 1)
    sup = _folder_task(tmp_path / "sup", {"circle": (90, 90, 90), "square": (170, 170, 170)}, 2)
    out = tmp_path / "scale"
    cfg = {
        "models": [str(tiny_clip_dir), str(tiny_clip_dir_b)],
        "output_dir": str(out),
        "seeds": 2,
        "device": "cpu",
        "eval_batch_size": 64,
        "patch_tasks": [rgb, cmy],
        "support_tasks": [sup],
        "multitask_tasks": ["rgb", "cmy"],
        "finetune": {"epochs": 1, "lr": 3e-3, "batch_size": 16, "warmup_steps": 0, "max_steps": 2, "cpu": True},
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "cka_images": 8,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["scale", str(tmp_path / "s.yaml")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("seed 0: done") == 2 and "| model | params (image tower)" in printed
    summary = json.loads((out / "scale.json").read_text())
    labels = ["model", "model-2"]  # both fixtures are folders named model
    for model in cfg["models"]:
        res = summary["results"][model]
        assert res["seeds"] == [0, 1]
        iv = res["summary"]["patched_patch"]
        assert iv["n"] == 2 and iv["low"] <= iv["mean"] <= iv["high"]
        assert 0.0 <= res["summary"]["alpha"]["mean"] <= 1.0
        assert -1.0 <= res["summary"]["cka_patch"]["mean"] <= 1.0 + 1e-9
        assert set(res["multitask"]) == {"joint", "sequential", "parallel"}
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Multi-task patching of rgb, cmy" in (out / "scale.md").read_text()
    # A seed changes the validation split carved from training data and the fine-tuning seed.
    cell0 = json.loads((out / labels[0] / "seed-0" / "cell.json").read_text())
    cell1 = json.loads((out / labels[0] / "seed-1" / "cell.json").read_text())
    assert cell0["single"]["rgb"]["n_test"] == cell1["single"]["rgb"]["n_test"]  # the same test images
    cfg0 = yaml.safe_load((out / labels[0] / "seed-1" / "config.yaml").read_text())
    assert cfg0["finetune"]["seed"] == 1 and all(t["split_seed"] == 1 for t in cfg0["patch_tasks"])
    # Sequential step 0 and parallel reuse the single-task fine-tunes: no checkpoint of theirs exists.
    cell_dir = out / labels[0] / "seed-0"
    assert (cell_dir / "single" / "rgb" / "finetune").is_dir() and (cell_dir / "joint" / "finetune").is_dir()
    assert not (cell_dir / "parallel").exists() and not (cell_dir / "sequential" / "0-rgb").exists()
    assert (cell_dir / "sequential" / "1-cmy" / "finetune").is_dir()

    # --report runs no cell: the reports of the finished cells, the missing ones listed.
    assert main(["scale", str(tmp_path / "s.yaml"), "--report", "--set", "seeds=3"]) == 0
    assert "not run yet: 2 cells" in capsys.readouterr().out
    reported = json.loads((out / "scale.json").read_text())
    assert reported["missing_cells"] == [{"model": m, "seed": 2} for m in cfg["models"]]
    assert reported["results"][cfg["models"][0]]["seeds"] == [0, 1]
    assert "Not run yet (report of the finished cells only)" in (out / "scale.md").read_text()
    assert not (out / labels[0] / "seed-2").exists()

    # Growing the study on --resume: a third seed runs only its new cells; finished ones are kept.
    stamp = (out / labels[0] / "seed-0" / "cell.json").stat().st_mtime_ns
    assert main(["scale", str(tmp_path / "s.yaml"), "--resume", "--set", "seeds=3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": done") == 6
    assert (out / labels[0] / "seed-0" / "cell.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "scale.json").read_text())["results"][cfg["models"][0]]["summary"]["alpha"]["n"] == 3
    # Without --resume a finished study is refused, in one line.
    assert main(["scale", str(tmp_path / "s.yaml")]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    # A changed recipe on resume is refused by the cells it would change.
    assert main(["scale", str(tmp_path / "s.yaml"), "--resume", "--set", "finetune.lr=0.1", "--set", "seeds=4"]) == 2
    assert "different config (finetune.lr" in capsys.readouterr().err
