"""Fault injection on the weight commands (issue 26): damaged run checkpoints are refused by every reader,
non-finite alphas and weights never reach disk, a killed merge's temporaries are cleaned, two merges into
one output cannot both succeed, and `paint interpolate` writes a model card."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from paint.cli import main
from paint.config import dump_config, parse_config
from paint.errors import PaintError
from paint.pipeline.locks import output_lock_path
from paint.pipeline.merge import MergeConfig, run_merge
from paint.pipeline.patch import PatchConfig
from paint.train.checkpoint import save_checkpoint
from paint.types import is_image_tower_key
from paint.utils import TEMP_PREFIX
from paint.weights import io, writer
from paint.weights.blocks import add_block_task_vectors, interpolate_blocks
from paint.weights.methods import get_method, with_block_weights
from paint.weights.ops import add_task_vectors, interpolate, lerp_tensor
from paint.weights.stream import merge_checkpoints

NON_FINITE = ["nan", "inf", "-inf"]


# ---------------------------------------------------------------------------- helpers


def _finished_run(tiny_clip_dir: Path, run: Path) -> Path:
    """A finished `paint patch` run's layout: its resolved config and a checkpoint of a (shifted) image tower."""
    run.mkdir()
    cfg = parse_config(PatchConfig, {"model": str(tiny_clip_dir), "patch_tasks": ["digits"], "output_dir": str(run)})
    dump_config(cfg, run / "config.yaml")
    tower = {k: v + 0.05 for k, v in io.load_state_dict(tiny_clip_dir).items() if is_image_tower_key(k)}
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), lambda s: 1)
    state = {"epoch": 0, "step": 1, "history": [], "fingerprint": "x", "done": True}
    save_checkpoint(run / "finetune" / "checkpoint", tower, None, scheduler, state)
    return run


def _damage(path: Path) -> None:
    """Flip bytes of tensor data (not the header): the file still loads, with wrong weights."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def _temps(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX))


def _killed_writer(out: Path) -> int:
    """Run a process that starts an atomic write of ``out`` (as paint merge does) and is SIGKILLed in it."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from paint.utils import atomic_path\n"
        "writing = atomic_path(Path(sys.argv[1]))  # kept referenced: the kill comes inside it\n"
        "tmp = writing.__enter__()\n"
        "tmp.mkdir()\n"
        "(tmp / 'model.safetensors').write_bytes(bytes(1 << 20))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.wait(timeout=120) == -9
    return proc.pid


def _merge_yaml(tmp_path: Path, base: Path, model: Path, out: Path) -> Path:
    path = tmp_path / "merge.yaml"
    cfg = {"base": str(base), "models": [{"path": str(model), "weight": 0.5}], "method": "task_arithmetic"}
    path.write_text(yaml.safe_dump({**cfg, "output": str(out)}))
    return path


# ---------------------------------------------------------------------------- 1. damaged run checkpoints


def test_interpolate_run_refuses_a_damaged_checkpoint(tiny_clip_dir, tmp_path, capsys):
    run = _finished_run(tiny_clip_dir, tmp_path / "run")
    args = ["interpolate", "--run", str(run), "--alpha", "0.5", "--out", str(tmp_path / "out")]
    assert main(args) == 0  # the intact run interpolates
    capsys.readouterr()
    _damage(run / "finetune" / "checkpoint" / "trainable.safetensors")
    assert main([*args, "--overwrite"]) == 2
    err = _error(capsys)
    assert "trainable.safetensors is damaged (its SHA-256 differs" in err and "fine-tune again" in err


def test_metrics_refuses_a_damaged_run_checkpoint(tiny_clip_dir, tmp_path, capsys):
    run = _finished_run(tiny_clip_dir, tmp_path / "run")
    ckpt = run / "finetune" / "checkpoint" / "trainable.safetensors"
    _damage(ckpt)
    assert main(["metrics", str(run)]) == 2
    assert "trainable.safetensors is damaged (its SHA-256 differs" in _error(capsys)
    assert not (run / "metrics.json").exists()
    # The same file named directly as the fine-tuned weights is verified too.
    argv = ["metrics", "--zeroshot", str(tiny_clip_dir), "--finetuned", str(ckpt), "--cka-task", "digits"]
    assert main(argv) == 2
    assert "trainable.safetensors is damaged (its SHA-256 differs" in _error(capsys)


# ---------------------------------------------------------------------------- 2. non-finite alphas and weights


@pytest.mark.parametrize("alpha", NON_FINITE)
def test_interpolate_refuses_a_non_finite_alpha(tiny_clip_dir, tiny_clip_dir_b, tmp_path, capsys, alpha):
    out = tmp_path / "out"
    argv = ["interpolate", "--zeroshot", str(tiny_clip_dir), "--finetuned", str(tiny_clip_dir_b), f"--alpha={alpha}",
            "--allow-extrapolation", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert f"alpha {float(alpha)} is not a finite number" in _error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_interpolation_functions_refuse_non_finite_alphas(value):
    sd0, sd1 = {"vision_model.encoder.layers.0.w": torch.zeros(3)}, {"vision_model.encoder.layers.0.w": torch.ones(3)}
    with pytest.raises(PaintError, match=r"^alpha (nan|-?inf) is not a finite number$"):
        interpolate(sd0, sd1, value, allow_extrapolation=True)
    with pytest.raises(PaintError, match="is not a finite number"):
        lerp_tensor(torch.zeros(3), torch.ones(3), value)
    with pytest.raises(PaintError, match=r"alpha of block 'layer\.0' .* is not a finite number"):
        interpolate_blocks(sd0, sd1, {"layer.0": value}, allow_extrapolation=True)
    with pytest.raises(PaintError, match="coefficient of task vector 0 .* is not a finite number"):
        add_task_vectors(sd0, [sd1], [value])
    with pytest.raises(PaintError, match=r"alpha of block 'layer\.0' .* is not a finite number"):
        add_block_task_vectors(sd0, [sd1], [{"layer.0": value}])
    with pytest.raises(PaintError, match=r"model 0: weight of block 'layer\.0' .* is not a finite number"):
        with_block_weights(get_method("task_arithmetic"), [{"layer.0": value}])


def test_checkpoint_writers_refuse_non_finite_tensors_naming_them(tmp_path):
    bad = {"ok": torch.ones(4), "vision.w": torch.tensor([1.0, math.nan, math.inf, 2.0]).half()}
    with pytest.raises(PaintError, match=r"^refusing to write tensor 'vision\.w': it holds 2 NaN or infinite values$"):
        writer.save_state_dict(bad, tmp_path / "out")
    with pytest.raises(PaintError, match="refusing to write tensor 'vision.w'"):
        writer.save_state_dict(bad, tmp_path / "one.safetensors")
    with pytest.raises(PaintError, match="refusing to write tensor 'vision.w'"):
        writer.save_safetensors_file(bad, tmp_path / "plain.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary left
    # Streamed in row chunks: the chunk holding the NaN is refused before its bytes are written.
    w = writer.ShardedWriter(tmp_path, {"emb": io.TensorInfo((4, 2), torch.float32)})
    with pytest.raises(PaintError, match="refusing to write tensor 'emb'"):
        w.write("emb", [torch.zeros(2, 2), torch.full((2, 2), math.nan)])
    w.abort()


def test_merging_a_diverged_model_writes_nothing(tmp_path):
    base = {"w": torch.zeros(8, 4), "b": torch.zeros(4)}
    diverged = {"w": torch.full((8, 4), math.nan), "b": torch.ones(4)}
    writer.save_state_dict(base, tmp_path / "base")
    (tmp_path / "ft").mkdir()
    torch.save(diverged, tmp_path / "ft" / "pytorch_model.bin")  # paint's own writers would refuse to write it
    with pytest.raises(PaintError, match="refusing to write tensor 'w'"):
        merge_checkpoints(tmp_path / "base", [tmp_path / "ft"], tmp_path / "out", "linear", progress=False)
    assert not (tmp_path / "out").exists() and _temps(tmp_path) == []


# ---------------------------------------------------------------------------- 3. temporaries of a killed merge


def test_merge_removes_the_temporaries_a_killed_merge_left(tiny_clip_dir, tiny_clip_dir_b, tmp_path):
    out = tmp_path / "models" / "merged"
    dead = _killed_writer(out)
    left = _temps(out.parent)
    assert len(left) == 1 and left[0].startswith(f"{TEMP_PREFIX}{dead}.merged.")  # the fault: 1 MiB left for good
    live = out.parent / f"{TEMP_PREFIX}{os.getpid()}.merged.inuse"  # a live process's temporary is kept
    live.mkdir()
    other = out.parent / f"{TEMP_PREFIX}{dead}.other.x"  # another output's: not this merge's business
    other.mkdir()
    assert main(["merge", str(_merge_yaml(tmp_path, tiny_clip_dir, tiny_clip_dir_b, out)), "--no-progress"]) == 0
    assert _temps(out.parent) == sorted([live.name, other.name])
    assert (out / "model.safetensors").is_file()


def test_interpolate_removes_the_temporaries_a_killed_interpolate_left(tiny_clip_dir, tiny_clip_dir_b, tmp_path):
    out = tmp_path / "theta"
    _killed_writer(out)
    assert len(_temps(tmp_path)) == 1
    argv = ["interpolate", "--zeroshot", str(tiny_clip_dir), "--finetuned", str(tiny_clip_dir_b), "--alpha", "0.5",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert _temps(tmp_path) == []


# ---------------------------------------------------------------------------- 4. two merges into one output


def test_a_second_merge_into_an_output_being_written_is_refused_at_once(tiny_clip_dir, tiny_clip_dir_b, tmp_path):
    out = tmp_path / "merged"
    second = _merge_yaml(tmp_path, tiny_clip_dir, tiny_clip_dir_b, out)
    seen: dict[str, object] = {}

    def evaluate(state_dict) -> float:  # runs while the first merge is writing its output
        import contextlib
        import io as stdio

        err = stdio.StringIO()
        with contextlib.redirect_stderr(err):
            seen["rc"] = main(["merge", str(second), "--no-progress", "--overwrite"])
        seen["err"] = err.getvalue()
        return 0.5

    cfg = MergeConfig(base=str(tiny_clip_dir), models=[{"path": str(tiny_clip_dir_b)}], output=str(out))
    summary = run_merge(cfg, evaluate=evaluate, progress=False)
    assert seen["rc"] == 2
    assert seen["err"].count("\n") == 1
    assert f"output {out} is being written by another process (pid {os.getpid()} on " in seen["err"]
    assert "another paint merge); wait for it to finish" in seen["err"]
    # The first merge's output stands, and the lock is gone with it.
    assert json.loads((out / "merge_summary.json").read_text())["method"] == "linear" == summary["method"]
    assert not output_lock_path(out).exists() and _temps(tmp_path) == []


def test_a_merge_that_lost_the_race_does_not_replace_the_winner_without_overwrite(
    tiny_clip_dir, tiny_clip_dir_b, tmp_path, monkeypatch
):
    """Both validated an absent output; the one that locks second finds it written and is refused."""
    import paint.pipeline.merge as pm

    out = tmp_path / "merged"
    cfg = MergeConfig(base=str(tiny_clip_dir), models=[{"path": str(tiny_clip_dir_b)}], output=str(out))
    real = pm.validate_merge
    winner = cfg.model_copy(update={"method": "task_arithmetic"})

    def validate_then_lose_the_race(c, evaluate=None):
        checked = real(c, evaluate)
        if c is cfg:
            run_merge(winner, progress=False)  # another merge writes the output meanwhile
        return checked

    monkeypatch.setattr(pm, "validate_merge", validate_then_lose_the_race)
    with pytest.raises(PaintError, match=f"output {out} exists and is not empty"):
        run_merge(cfg, progress=False)
    assert json.loads((out / "merge_summary.json").read_text())["method"] == "task_arithmetic"


# ---------------------------------------------------------------------------- 5. interpolate's model card


def test_interpolate_writes_a_model_card(tiny_clip_dir, tiny_clip_dir_b, tmp_path):
    out = tmp_path / "theta"
    argv = ["interpolate", "--zeroshot", str(tiny_clip_dir), "--finetuned", str(tiny_clip_dir_b), "--alpha", "0.3",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "alpha = **0.3**" in card and "arXiv:2208.05592" in card and "arXiv:2109.01903" in card
    assert f"| zero-shot (theta_zs) | `{tiny_clip_dir}` |" in card
    assert f"| fine-tuned (theta_ft) | `{tiny_clip_dir_b}` |" in card
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_interpolate_run_card_names_the_run_checkpoint(tiny_clip_dir, tmp_path):
    run = _finished_run(tiny_clip_dir, tmp_path / "run")
    out = tmp_path / "theta"
    assert main(["interpolate", "--run", str(run), "--alpha", "1.5", "--allow-extrapolation", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "alpha = **1.5** (extrapolated: outside [0, 1])" in card
    assert f"`{run / 'finetune' / 'checkpoint' / 'trainable.safetensors'}`" in card
