"""The command line end to end, in-process, on a tiny model; and every bad input -> one line, exit 2."""

import json
from pathlib import Path

import yaml
from transformers import CLIPModel

from paint.cli import main


def _config(tmp_path: Path, model: Path, **extra) -> Path:
    cfg = {
        "model": str(model),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 64, "warmup_steps": 2, "max_steps": 4},
        "selection": {"alphas": [0.0, 0.5, 1.0]},
        "eval_batch_size": 512,
    }
    cfg.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _looks_finished(run: Path) -> bool:
    return (run / "summary.json").exists()


def test_patch_end_to_end(tiny_clip_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_clip_dir)
    assert main(["patch", str(cfg)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["alpha"] in (0.0, 0.5, 1.0)
    # the default selection races the grid screened by its ends: the sweep holds what read every image
    assert summary["selection"]["rule"] == "screened-race:grid/constrained-mean"
    assert {0.0, 1.0, summary["alpha"]} <= {p["alpha"] for p in summary["sweep"]} <= {0.0, 0.5, 1.0}
    assert "The grid was raced" in (run / "summary.md").read_text()  # the report says its sweep is partial
    assert set(summary["test"]["digits"]) == {"role", "zeroshot", "finetuned", "patched"}
    assert summary["test"]["digits"]["role"] == "patch"
    assert all(0.0 <= summary["test"]["digits"][k] <= 1.0 for k in ("zeroshot", "finetuned", "patched"))
    for name in ("config.yaml", "results.jsonl", "summary.md", "tradeoff.png", "model/README.md"):
        assert (run / name).is_file(), name
    # The patched checkpoint is a standard HF checkpoint, and no checkpoint per alpha was written.
    CLIPModel.from_pretrained(run / "model")
    weights = sorted(str(p.relative_to(run)) for p in run.rglob("*.safetensors") if "cache" not in p.parts)
    assert weights == [
        "finetune/checkpoint/optimizer.safetensors",
        "finetune/checkpoint/trainable.safetensors",
        "model/model.safetensors",
    ]
    # The resolved config round-trips.
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["finetune"]["max_steps"] == 4 and resolved["selection"]["objective"] == "constrained"
    assert resolved["selection"]["constraint"] == "mean" and resolved["selection"]["epsilon"] == 1.0  # the one default
    # A second run without --resume is refused; with --resume it re-evaluates nothing.
    n_results = len((run / "results.jsonl").read_text().splitlines())
    assert main(["patch", str(cfg)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["patch", str(cfg), "--resume"]) == 0
    assert len((run / "results.jsonl").read_text().splitlines()) == n_results


def _bad(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("paint "), err
    assert message in errors[0], err
    assert "Traceback" not in err


def test_bad_inputs_give_one_line_and_exit_2(tiny_clip_dir, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = _config(tmp_path, tmp_path / "missing" / "model")
    _bad(capsys, ["patch", str(cfg)], "does not exist")
    cfg = _config(tmp_path, tiny_clip_dir, learning_rate=0.1)
    _bad(capsys, ["patch", str(cfg)], "learning_rate: unknown field")
    cfg = _config(tmp_path, tiny_clip_dir, eval_batch_size="big")
    _bad(capsys, ["patch", str(cfg)], "eval_batch_size")
    cfg = _config(tmp_path, tiny_clip_dir, selection={"alphas": [0.0, 1.5]})
    _bad(capsys, ["patch", str(cfg)], "outside [0, 1]")
    cfg = _config(tmp_path, tiny_clip_dir, patch_tasks=["no-such-task"])
    _bad(capsys, ["patch", str(cfg)], "no-such-task")
    cfg = _config(tmp_path, tiny_clip_dir, patch_tasks=[{"name": "digits", "classnames": ["a", "b"]}])
    _bad(capsys, ["patch", str(cfg)], "class names")
    _bad(capsys, ["patch", str(tmp_path / "nope.yaml")], "does not exist")
    assert not _looks_finished(run)


def test_interpolate_refuses_different_architectures(tiny_clip_dir, tmp_path, capsys):
    from tests.conftest import make_tiny_clip

    other = make_tiny_clip(tmp_path / "wide", hidden=48)
    _bad(
        capsys,
        [
            "interpolate",
            "--zeroshot",
            str(tiny_clip_dir),
            "--finetuned",
            str(other),
            "--alpha",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        "shape",
    )
    assert not (tmp_path / "o").exists()


def test_interpolate_writes_a_loadable_checkpoint(tiny_clip_dir, tiny_clip_dir_b, tmp_path):
    import torch

    out = tmp_path / "mid"
    assert (
        main(
            [
                "interpolate",
                "--zeroshot",
                str(tiny_clip_dir),
                "--finetuned",
                str(tiny_clip_dir_b),
                "--alpha",
                "0.25",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    a, b, m = (CLIPModel.from_pretrained(p).state_dict() for p in (tiny_clip_dir, tiny_clip_dir_b, out))
    k = "vision_model.encoder.layers.0.mlp.fc1.weight"
    torch.testing.assert_close(m[k], 0.75 * a[k] + 0.25 * b[k])
    t = "text_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(m[t], a[t])


def _folder(root: Path, counts: dict[str, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_bad_data_gives_one_line_and_exit_2(tiny_clip_dir, tmp_path, capsys):
    empty = _folder(tmp_path / "empty", {"cat": 0, "dog": 0})
    cfg = _config(tmp_path, tiny_clip_dir, support_tasks=[{"name": "pets", "source": "folder", "path": str(empty)}])
    _bad(capsys, ["patch", str(cfg)], "pets")
    three = _folder(tmp_path / "three", {"cat": 6, "dog": 6, "red": 6})
    spec = {"name": "pets", "source": "folder", "path": str(three), "classnames": ["cat", "dog"]}
    cfg = _config(tmp_path, tiny_clip_dir, support_tasks=[spec])
    _bad(capsys, ["patch", str(cfg)], "class")
    assert not _looks_finished(tmp_path / "run")


def test_patch_with_a_folder_support_task(tiny_clip_dir, tmp_path):
    pets = _folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    spec = {"name": "pets", "source": "folder", "path": str(pets), "templates": ["a photo of the {}."]}
    cfg = _config(
        tmp_path,
        tiny_clip_dir,
        support_tasks=[spec],
        selection={"alphas": [0.0, 0.5, 1.0], "objective": "constrained", "constraint": "each", "epsilon": 1.0},
    )
    assert main(["patch", str(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["pets"]["role"] == "support"
    # The constrained rule never ships an alpha whose support accuracy broke the bound on validation.
    chosen = next(p for p in summary["sweep"] if p["alpha"] == summary["alpha"])
    zero = next(p for p in summary["sweep"] if p["alpha"] == 0.0)
    assert chosen["val"]["pets"] >= zero["val"]["pets"] - 0.01 - 1e-9


def test_patch_with_a_search_strategy_evaluates_fewer_points(tiny_clip_dir, tmp_path):
    search = {"strategy": "bounded", "objective": "mean_accuracy", "budget": 5}
    cfg = _config(tmp_path, tiny_clip_dir, selection=search)
    assert main(["patch", str(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    info = summary["selection"]["search"]
    assert info["strategy"] == "bounded" and info["n_model_evals"] <= 5
    assert summary["alpha"] == info["alpha"] and summary["selection"]["rule"] == "search:bounded/mean"
    assert {p["alpha"] for p in summary["sweep"]} == set(info["alphas_evaluated"]) | {0.0}
    assert 0.0 <= summary["test"]["digits"]["patched"] <= 1.0


def test_patch_with_several_tasks_compares_modes(tiny_clip_dir, tmp_path):
    pets = _folder(tmp_path / "pets", {"cat": 12, "dog": 12})
    second = {"name": "pets", "source": "folder", "path": str(pets), "templates": ["a photo of the {}."]}
    cfg = _config(
        tmp_path,
        tiny_clip_dir,
        patch_tasks=["digits", second],
        modes=["joint", "parallel"],
        selection={"alphas": [0.0, 0.5, 1.0]},
    )
    assert main(["patch", str(cfg)]) == 0
    run = tmp_path / "run"
    comparison = json.loads((run / "comparison.json").read_text())
    modes = [r["mode"] for r in comparison["comparison"]]
    assert modes == ["zero-shot", "joint", "parallel"]
    assert (run / "comparison.md").is_file() and (run / "joint" / "model" / "config.json").is_file()
    parallel = next(r for r in comparison["comparison"] if r["mode"] == "parallel")
    assert len(parallel["alphas"]) == 2 and all(a in (0.0, 0.5, 1.0) for a in parallel["alphas"])


def test_shipped_example_configs_validate():
    from paint.config import load_config
    from paint.pipeline.patch import PatchConfig

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(PatchConfig, root / "examples" / "patch-digits.yaml")
    assert cfg.selection.constraint == "mean" and cfg.patch_tasks[0].name == "digits"
    from paint.pipeline.multitask import MultitaskConfig

    mt = load_config(MultitaskConfig, root / "examples" / "multitask-digits-counting.yaml")
    assert [t.name for t in mt.patch_tasks] == ["digits", "counting"] and mt.selection.constraint == "mean"


def test_compare_help_names_every_registered_recipe(capsys):
    import pytest

    from paint.cli import main
    from paint.train.recipes.registry import RECIPES

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the epilog
    missing = [name for name in RECIPES if name not in text[text.index("recipes:") :]]
    assert not missing, f"paint compare --help leaves {missing} out: {text}"
