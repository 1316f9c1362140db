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


def _toy_fit(tmp_path, loss_fn, log_every: int, epochs: int = 2):
    """The shared loop on a 4 -> 1 linear model, 16 samples in batches of 4: 4 steps an epoch."""
    from torch.utils.data import DataLoader, TensorDataset

    from paint.train.loop import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = TensorDataset(torch.randn(16, 4))
    cfg = FinetuneConfig(epochs=epochs, lr=1e-2, warmup_steps=0, weight_decay=0.0, cpu=True)
    loaders = lambda epoch: DataLoader(data, batch_size=4, shuffle=False)  # noqa: E731
    return model, fit(model, ["weight", "bias"], loaders, loss_fn, cfg, tmp_path, fingerprint="t", log_every=log_every)


def test_a_non_finite_loss_between_two_reads_is_named_at_its_own_step_and_never_checkpointed(tmp_path):
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = model(batch[0]).pow(2).mean()
        return loss * float("nan") if len(calls) == 6 else loss  # epoch 1's second step

    with pytest.raises(PaintError, match=r"^train: the loss became nan at epoch 1, step 6; lower the learning rate"):
        _toy_fit(tmp_path, loss_fn, log_every=100)  # read at each epoch's end only
    assert len(calls) == 8  # the loop ran on to the read; the epoch's checkpoint was not written
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["epoch"] == 0


def test_reading_the_loss_every_step_or_every_epoch_gives_the_same_run(tmp_path):
    def loss_fn(model, batch):
        return model(batch[0]).pow(2).mean()

    m1, r1 = _toy_fit(tmp_path / "a", loss_fn, log_every=1)
    m2, r2 = _toy_fit(tmp_path / "b", loss_fn, log_every=3)
    assert r1.history == r2.history and r1.steps == r2.steps == 8
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_the_checkpoint_saver_resumes_what_it_saved_and_refuses_another_run(tmp_path):
    from paint.train.checkpoint import CheckpointSaver

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    saver = CheckpointSaver(tmp_path, "fp")
    assert saver.resume(allowed=False) is None  # nothing there yet
    history = [{"epoch": 0, "step": 3, "loss": 1.5}]
    saver.save(0, 3, history, False, dict(model.named_parameters()), opt, sched)
    got = saver.resume(allowed=True)
    assert (got.epoch, got.step, got.history, got.scheduler) == (0, 3, history, sched.state_dict())
    assert all(torch.equal(got.trainable[k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(got.optimizer)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(PaintError, match="pass --resume to continue it"):
        saver.resume(allowed=False)
    with pytest.raises(PaintError, match="made by a different run"):
        CheckpointSaver(tmp_path, "other").resume(allowed=True)
    CheckpointSaver(tmp_path, "fp", writer=False).save(1, 6, history, True, {}, None, sched)  # not rank 0: no write
    assert saver.resume(allowed=True).epoch == 0
