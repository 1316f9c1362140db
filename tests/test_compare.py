"""paint compare: one table and one frontier plot over several recipes; finished recipes are kept on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from paint.cli import main

FT = {"epochs": 1, "lr": 1e-3, "batch_size": 64, "warmup_steps": 0, "max_steps": 2, "weight_decay": 0.0}


def _config(tmp_path: Path, model: Path, recipes: list) -> Path:
    cfg = {
        "model": str(model),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "support_tasks": ["shapes"],
        "finetune": FT,
        "recipes": recipes,
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "frontier_alphas": [0.0, 0.5, 1.0],
        "eval_batch_size": 256,
        "threads": 1,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_compare_writes_table_and_plot_and_skips_finished_recipes_on_resume(tiny_clip_dir, tmp_path, capsys):
    recipes = ["frozen-head", {"recipe": {"name": "l2-sp", "strength": 1.0}, "label": "l2sp-1"}, "lp-ft"]
    cfg = _config(tmp_path, tiny_clip_dir, recipes)
    assert main(["compare", str(cfg)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "comparison.json").read_text())
    assert [r["label"] for r in summary["recipes"]] == ["frozen-head", "l2sp-1", "lp-ft"]
    for r in summary["recipes"]:
        assert r["alpha"] in (0.0, 0.5, 1.0)
        assert [p["alpha"] for p in r["frontier"]] == [0.0, 0.5, 1.0]
        assert set(r["test"]) == {"digits", "shapes"}
        assert r["trainable_params"] > 0 and r["peak_rss_mb"] > 0 and r["finetune_seconds"] >= 0
        # alpha 0 is the zero-shot model for every recipe (lp-ft's learned head is interpolated too)
        assert r["frontier"][0]["test"] == summary["zeroshot_test"]
        best = r["best_within_epsilon"]
        assert best is not None and best["support_mean"] >= r["frontier"][0]["support_mean"] - 0.01 - 1e-12
    assert (run / "frontier.png").stat().st_size > 1000
    table = (run / "comparison.md").read_text()
    assert "| zero-shot |" in table and "| l2sp-1 |" in table and "peak RSS MB" in table
    assert (run / "recipes" / "lp-ft" / "finetune" / "probe-heads.safetensors").is_file()

    # Resume after one recipe's result is lost: the other two are kept, that one is redone.
    (run / "comparison.json").unlink()
    (run / "recipes" / "l2sp-1" / "result.json").unlink()
    kept = (run / "recipes" / "frozen-head" / "result.json").read_text()
    capsys.readouterr()
    assert main(["compare", str(cfg), "--resume"]) == 0
    again = json.loads((run / "comparison.json").read_text())
    assert again["skipped_on_resume"] == ["frozen-head", "lp-ft"]
    assert (run / "recipes" / "frozen-head" / "result.json").read_text() == kept
    redone = next(r for r in again["recipes"] if r["label"] == "l2sp-1")
    assert redone["resumed_from_epoch"] == 0  # its finished checkpoint was reused, not retrained
    assert "kept from the previous run: frozen-head, lp-ft" in capsys.readouterr().out


@pytest.mark.parametrize(
    "recipes, message",
    [
        (["lora", "lora"], "recipe 'lora' is listed twice; give one of them a label"),
        ([{"recipe": "soup"}], "exactly one of seeds or lrs"),
        ([{"recipe": "frozen-head", "finetune": {"lr": -1}}], "recipe 'frozen-head'"),
        ([{"recipe": "frozen-head", "label": "a/b"}], "must be letters, digits"),
        ([{"recipe": "sgd"}], "sgd"),
    ],
)
def test_compare_config_errors_are_one_line(tiny_clip_dir, tmp_path, capsys, recipes, message):
    cfg = _config(tmp_path, tiny_clip_dir, recipes)
    assert main(["compare", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_compare_over_seeds_reports_intervals_paired_differences_and_grows_on_resume(tiny_clip_dir, tmp_path):
    recipes = ["frozen-head", {"recipe": {"name": "l2-sp", "strength": 1.0}, "label": "l2sp-1"}]
    cfg_path = _config(tmp_path, tiny_clip_dir, recipes)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["seeds"] = 3
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["compare", str(cfg_path)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "comparison.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["reference"] == "frozen-head"
    per_seed = {s: json.loads((run / f"seed-{s}" / "comparison.json").read_text()) for s in (0, 1, 2)}
    for s, one in per_seed.items():
        assert one["seed"] == s  # each seed is a full run with its own fine-tuning seed and validation split
        seed_cfg = yaml.safe_load((run / f"seed-{s}" / "config.yaml").read_text())
        assert seed_cfg["finetune"]["seed"] == s and seed_cfg["patch_tasks"][0]["split_seed"] == s
    for rec in summary["recipes"]:
        rows = [next(r for r in per_seed[s]["recipes"] if r["label"] == rec["label"]) for s in (0, 1, 2)]
        patch = [100 * r["patch_mean"] for r in rows]
        assert rec["patch"]["seeds"]["n"] == 3 and rec["patch"]["seeds"]["mean"] == pytest.approx(
            sum(patch) / 3, abs=1e-3
        )
        img = rec["patch"]["images"]
        assert img["low"] <= img["mean"] <= img["high"] and img["high"] - img["low"] > 0
        held = sum(r["bound_on_test"]["holds"] for r in rows)
        assert rec["bound_on_test"]["held"] == held and rec["bound_on_test"]["of"] == 3
    ref, other = summary["recipes"]
    assert "vs_reference" not in ref
    diff = other["vs_reference"]["patch"]
    rows = {
        lab: [next(r for r in per_seed[s]["recipes"] if r["label"] == lab) for s in (0, 1, 2)]
        for lab in ("frozen-head", "l2sp-1")
    }
    expected = sum(100 * (a["patch_mean"] - b["patch_mean"]) for a, b in zip(rows["l2sp-1"], rows["frozen-head"])) / 3
    assert diff["mean"] == pytest.approx(expected, abs=1e-3)
    assert diff["low"] <= diff["mean"] <= diff["high"] and diff["established"] == (diff["low"] > 0 or diff["high"] < 0)
    table = (run / "comparison.md").read_text()
    assert "patch vs frozen-head" in table and "| l2sp-1 |" in table and "/3 |" in table
    assert (run / "frontier.png").stat().st_size > 1000

    # Resume with one seed's result lost and a fourth seed added: seeds 0 and 2 are kept as they were.
    kept = {s: (run / f"seed-{s}" / "comparison.json").read_text() for s in (0, 2)}
    (run / "seed-1" / "comparison.json").unlink()
    cfg["seeds"] = 4
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["compare", str(cfg_path), "--resume"]) == 0
    again = json.loads((run / "comparison.json").read_text())
    assert again["seeds"] == [0, 1, 2, 3] and again["recipes"][1]["patch"]["seeds"]["n"] == 4
    assert all((run / f"seed-{s}" / "comparison.json").read_text() == kept[s] for s in (0, 2))
