"""Training under faults: a resumed augmented run is bit-identical, damaged checkpoints are refused
with one line, and a non-finite loss stops the run instead of producing NaN weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paint.errors import PaintError
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune


def _colour_task(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


CFG = FinetuneConfig(epochs=3, lr=3e-3, batch_size=32, warmup_steps=2, weight_decay=0.0, seed=0, augment="crop")


def _fresh(tiny_clip_dir):
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    x, y = _colour_task(96, bundle.spec.crop, 0)
    return bundle, [TrainingSet("colours", x, y, head)]


def _crash_at(epoch_to_crash: int):
    def hook(epoch, model):
        if epoch == epoch_to_crash:
            raise KeyboardInterrupt  # as a Ctrl-C during that epoch's evaluation: its checkpoint is not written
        return {}

    return hook


def _trained_checkpoint(tiny_clip_dir, out):
    bundle, sets = _fresh(tiny_clip_dir)
    cfg = CFG.model_copy(update={"epochs": 1, "augment": "none"})
    finetune(bundle.model, sets, bundle.spec, cfg, out_dir=out, fingerprint="x")
    return cfg


def test_resumed_augmented_run_is_bit_identical_to_an_uninterrupted_one(tiny_clip_dir, tmp_path):
    bundle, sets = _fresh(tiny_clip_dir)
    finetune(bundle.model, sets, bundle.spec, CFG)
    reference = {k: v.clone() for k, v in bundle.model.state_dict().items()}

    bundle2, sets2 = _fresh(tiny_clip_dir)
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 2: the checkpoint holds epochs 0 and 1
        finetune(bundle2.model, sets2, bundle2.spec, CFG, out_dir=tmp_path, fingerprint="x", on_epoch_end=_crash_at(2))
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["epoch"] == 1

    bundle3, sets3 = _fresh(tiny_clip_dir)
    res = finetune(bundle3.model, sets3, bundle3.spec, CFG, out_dir=tmp_path, resume=True, fingerprint="x")
    assert res.resumed_from_epoch == 1
    got = bundle3.model.state_dict()
    differing = [k for k in reference if not torch.equal(got[k], reference[k])]
    assert differing == []


def test_flipped_bytes_in_the_checkpoint_are_refused_naming_the_file(tiny_clip_dir, tmp_path):
    cfg = _trained_checkpoint(tiny_clip_dir, tmp_path)
    weights = tmp_path / "checkpoint" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):  # tensor bytes, not the header: still a loadable file
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    bundle, sets = _fresh(tiny_clip_dir)
    with pytest.raises(PaintError, match=r"trainable\.safetensors is damaged .*SHA-256.*delete"):
        finetune(bundle.model, sets, bundle.spec, cfg, out_dir=tmp_path, resume=True, fingerprint="x")


def test_truncated_checkpoint_header_is_one_line_even_without_checksums(tiny_clip_dir, tmp_path):
    cfg = _trained_checkpoint(tiny_clip_dir, tmp_path)
    ckpt = tmp_path / "checkpoint"
    (ckpt / "trainable.safetensors").write_bytes((ckpt / "trainable.safetensors").read_bytes()[:12])
    bundle, sets = _fresh(tiny_clip_dir)
    with pytest.raises(PaintError, match="trainable.safetensors is damaged"):
        finetune(bundle.model, sets, bundle.spec, cfg, out_dir=tmp_path, resume=True, fingerprint="x")
    # A checkpoint written before checksums existed: the safetensors error itself becomes one line.
    (ckpt / "checksums.json").unlink()
    with pytest.raises(PaintError, match=r"cannot read checkpoint .*delete it to start over"):
        finetune(bundle.model, sets, bundle.spec, cfg, out_dir=tmp_path, resume=True, fingerprint="x")


def test_checkpoint_records_a_hash_of_every_file(tiny_clip_dir, tmp_path):
    _trained_checkpoint(tiny_clip_dir, tmp_path)
    ckpt = tmp_path / "checkpoint"
    sums = json.loads((ckpt / "checksums.json").read_text())["sha256"]
    assert set(sums) == {"trainable.safetensors", "optimizer.safetensors", "state.json"}
    assert all(len(v) == 64 for v in sums.values())


def test_non_finite_loss_stops_training_with_one_line(tiny_clip_dir):
    bundle, sets = _fresh(tiny_clip_dir)
    cfg = CFG.model_copy(update={"lr": 1e30, "augment": "none", "grad_clip": 0.0, "warmup_steps": 0})
    with pytest.raises(
        PaintError, match=r"fine-tune: the loss became nan at epoch 0, step 2; lower the learning rate \(lr=1e\+30\)"
    ):
        finetune(bundle.model, sets, bundle.spec, cfg)
