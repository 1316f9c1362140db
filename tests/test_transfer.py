"""Broad transfer: the delta matrix, its table and heatmap, and the end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from paint.studies.transfer import delta_matrix, matrix_markdown, plot_heatmap

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_delta_matrix_by_hand(tmp_path):
    zs = {"a": 0.5, "b": 0.8}
    patched = {"a": {"a": 0.9, "b": 0.75}, "b": {"a": 0.55, "b": 0.95}}
    m = delta_matrix(zs, patched, ["a", "b"])
    assert m == [[pytest.approx(40.0), pytest.approx(-5.0)], [pytest.approx(5.0), pytest.approx(15.0)]]
    table = matrix_markdown(m, ["a", "b"], [0.4, 0.7])
    assert "| a (0.4) | +40.0 | -5.0 |" in table and "| b (0.7) | +5.0 | +15.0 |" in table
    png = plot_heatmap(m, ["a", "b"], tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _colour_folder(root, seed):
    """An image-folder task: three colours, 20 noisy 16x16 images each."""
    rng = np.random.default_rng(seed)
    for name, rgb in (("red", (200, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 200))):
        d = root / name
        d.mkdir(parents=True)
        for i in range(20):
            arr = (np.asarray(rgb, np.float32) + rng.normal(0, 25, (16, 16, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_paint_transfer_command_end_to_end(tiny_clip_dir, tmp_path, capsys):
    import yaml

    from paint.cli import main

    folder = _colour_folder(tmp_path / "colours", 0)
    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "out"),
        "device": "cpu",
        "eval_batch_size": 128,
        "tasks": [
            "digits",
            {"name": "colours", "source": "folder", "path": str(folder), "templates": ["a photo of the {}."]},
        ],
        "finetune": {"epochs": 1, "lr": 3e-3, "batch_size": 32, "warmup_steps": 0, "max_steps": 3, "cpu": True},
        "selection": {"strategy": "grid", "objective": "mean_accuracy", "alphas": [0.0, 0.5, 1.0], "budget": 3},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["transfer", str(tmp_path / "t.yaml")]) == 0
    assert "| patched on (alpha) | digits | colours |" in capsys.readouterr().out
    out = tmp_path / "out"
    saved = json.loads((out / "transfer.json").read_text())
    m = saved["delta_points"]["patched"]
    assert len(m) == 2 and all(len(r) == 2 for r in m)
    # Every entry is (patched - zero-shot) on the test split, as stored alongside.
    for i, src in enumerate(saved["tasks"]):
        for j, dst in enumerate(saved["tasks"]):
            assert m[i][j] == pytest.approx(100 * (saved["patched_test"][src][dst] - saved["zeroshot_test"][dst]))
        assert saved["alphas"][src] in (0.0, 0.5, 1.0)
        assert saved["searches"][src]["n_model_evals"] == 3 and len(saved["searches"][src]["sweep"]) == 3
    assert (out / "transfer.png").is_file() and (out / "transfer.md").is_file() and (out / "config.yaml").is_file()
    # A finished run is not overwritten: one-line error, exit 2.
    assert main(["transfer", str(tmp_path / "t.yaml")]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_paint_transfer_over_seeds_gives_each_cell_its_paired_interval(tiny_clip_dir, tmp_path, capsys):
    import yaml

    from paint.cli import main

    folder = _colour_folder(tmp_path / "colours", 0)
    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "out"),
        "device": "cpu",
        "tasks": [
            "digits",
            {"name": "colours", "source": "folder", "path": str(folder), "templates": ["a photo of the {}."]},
        ],
        "finetune": {"epochs": 1, "lr": 3e-3, "batch_size": 32, "warmup_steps": 0, "max_steps": 3, "cpu": True},
        "selection": {"strategy": "grid", "objective": "mean_accuracy", "alphas": [0.0, 0.5, 1.0]},
        "seeds": 3,
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["transfer", str(tmp_path / "t.yaml")]) == 0
    out = tmp_path / "out"
    saved = json.loads((out / "transfer.json").read_text())
    per_seed = [json.loads((out / f"seed-{s}" / "transfer.json").read_text()) for s in range(3)]
    assert saved["seeds"] == [0, 1, 2]
    for i, src in enumerate(saved["tasks"]):
        assert saved["alphas"][src] == [p["alphas"][src] for p in per_seed]
        for j, dst in enumerate(saved["tasks"]):
            cell = saved["cells"][src][dst]
            expected = np.mean([p["delta_points"]["patched"][i][j] for p in per_seed])
            assert (
                cell["mean"]
                == pytest.approx(expected, abs=1e-3)
                == pytest.approx(saved["delta_points"]["patched"][i][j])
            )
            assert cell["low"] <= cell["mean"] <= cell["high"] and cell["seeds"] == 3
            assert cell["established"] == (cell["low"] > 0 or cell["high"] < 0)
    assert "± " in (out / "transfer.md").read_text() and (out / "transfer.png").is_file()
