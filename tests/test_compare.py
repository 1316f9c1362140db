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
