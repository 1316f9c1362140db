"""A bad checkpoint ends in one PaintError line that names it, never a traceback or a silently random model.

Each case starts from the tiny CLIP of conftest.py and breaks one thing: weights that would need
arbitrary pickle, a truncated safetensors file, a config.json that disagrees with the weights,
weights that do not cover the model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from paint.cli import main
from paint.errors import PaintError
from paint.models.clip import load_clip
from paint.weights import io


class _Mkdir:
    """Unpickling this would create a directory: a harmless stand-in for a malicious payload."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _eval(model: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["eval", "--model", str(model), "--task", "shapes"])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_pickle_weights_that_would_run_code_are_refused_in_one_line(tiny_clip_dir, tmp_path, capsys):
    model = _copy(tiny_clip_dir, tmp_path / "hf")
    sd = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({**sd, "extra": _Mkdir(marker)}, model / "pytorch_model.bin")
    with pytest.raises(
        PaintError, match=r"pytorch_model\.bin would need arbitrary pickle .*unsupported GLOBAL .*mkdir"
    ):
        load_clip(str(model))
    rc, err = _eval(model, capsys)
    line = _one_line(err)
    assert rc == 2
    assert str(model / "pytorch_model.bin") in line and "arbitrary pickle" in line
    assert "GLOBAL" in line and "Check the documentation" not in line  # torch's useful line, not its last
    assert not marker.exists()  # nothing in the file ran, in either load


def test_truncated_safetensors_is_named_in_one_line(tiny_clip_dir, tmp_path, capsys):
    model = _copy(tiny_clip_dir, tmp_path / "hf")
    weights = model / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PaintError, match=r"model\.safetensors is truncated \(\d+ of \d+ tensor data bytes\)"):
        load_clip(str(model))
    with pytest.raises(PaintError, match="is truncated"):
        io.open_checkpoint(weights)  # merges and conversions see the same error
    rc, err = _eval(model, capsys)
    assert rc == 2 and str(weights) in _one_line(err)


def test_config_wider_than_weights_names_the_first_mismatching_tensor(tiny_clip_dir, tmp_path, capsys):
    model = _copy(tiny_clip_dir, tmp_path / "hf")
    cfg = json.loads((model / "config.json").read_text())
    cfg["vision_config"]["hidden_size"] = 64  # the weights are 32 wide
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        PaintError,
        match=r"does not match its config\.json: tensor 'vision_model\.embeddings\.class_embedding' has shape \(32,\) "
        r"in the weights but \(64,\)",
    ):
        load_clip(str(model))
    rc, err = _eval(model, capsys)
    assert rc == 2 and str(model) in _one_line(err)


def test_weights_that_do_not_cover_the_model_are_an_error_not_random_weights(tiny_clip_dir, tmp_path):
    model = _copy(tiny_clip_dir, tmp_path / "hf")
    sd = load_file(str(model / "model.safetensors"))
    partial = {k: v for k, v in sd.items() if not k.startswith("text_model.encoder.layers.1.")}
    save_file(partial, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PaintError, match=r"has no tensor 'text_model\.encoder\.layers\.1\.\S+' \(\d+ of the model's"):
        load_clip(str(model))


def test_weights_the_config_has_no_place_for_are_an_error(tiny_clip_dir, tmp_path):
    model = _copy(tiny_clip_dir, tmp_path / "hf")
    cfg = json.loads((model / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 1  # the weights have 2 layers
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PaintError, match=r"holds tensor 'text_model\.encoder\.layers\.1\.\S+' \(\d+ in all\)"):
        load_clip(str(model))


def test_a_sound_checkpoint_still_loads_exactly(tiny_clip_dir):
    bundle = load_clip(str(tiny_clip_dir))
    stored = load_file(str(tiny_clip_dir / "model.safetensors"))
    state = bundle.model.state_dict()
    assert set(stored) == set(state)
    assert all(torch.equal(stored[k], state[k]) for k in stored)
