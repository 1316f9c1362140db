import numpy as np
import pytest
import torch

from paint.evaluation.results import evaluate_split
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.weights.ops import is_image_tower_key


def _colour_task(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Images filled with one of three colours plus noise; the label is the colour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float32)
    imgs = base[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


CFG = FinetuneConfig(epochs=3, lr=3e-3, batch_size=32, warmup_steps=2, weight_decay=0.0, seed=0)


def _setup(tiny_clip_dir):
    bundle = load_clip(str(tiny_clip_dir))
    head = zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."])
    size = bundle.spec.crop
    train = _colour_task(192, size, 0)
    test = _colour_task(96, size, 1)
    return bundle, head, train, test


def test_finetune_trains_only_the_image_tower_and_learns(tiny_clip_dir):
    bundle, head, (xtr, ytr), (xte, yte) = _setup(tiny_clip_dir)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    n_params = sum(p.numel() for p in bundle.model.parameters())
    acc0 = evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"]
    head_before = head.clone()
    finetune(bundle.model, [TrainingSet("colours", xtr, ytr, head)], bundle.spec, CFG)
    after = bundle.model.state_dict()
    acc1 = evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"]
    assert acc1 >= 0.9 and acc1 > acc0 + 0.2, (acc0, acc1)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(is_image_tower_key(k) for k in changed)
    for k in before:
        if not is_image_tower_key(k):  # text tower, text projection, logit scale: bit-identical
            assert torch.equal(before[k], after[k]), k
    assert torch.equal(head, head_before)
    assert sum(p.numel() for p in bundle.model.parameters()) == n_params  # no new parameters


def test_interrupted_run_resumes_to_the_same_weights(tiny_clip_dir, tmp_path):
    bundle, head, (xtr, ytr), _ = _setup(tiny_clip_dir)
    sets = [TrainingSet("colours", xtr, ytr, head)]
    finetune(bundle.model, sets, bundle.spec, CFG)
    reference = {k: v.clone() for k, v in bundle.model.state_dict().items()}

    bundle2, head2, _, _ = _setup(tiny_clip_dir)
    sets2 = [TrainingSet("colours", xtr, ytr, head2)]

    def crash_after_first_epoch(epoch, model):
        if epoch == 1:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        finetune(
            bundle2.model,
            sets2,
            bundle2.spec,
            CFG,
            out_dir=tmp_path,
            fingerprint="x",
            on_epoch_end=crash_after_first_epoch,
        )
    assert (tmp_path / "checkpoint" / "trainable.safetensors").is_file()

    bundle3, head3, _, _ = _setup(tiny_clip_dir)
    from paint.errors import PaintError

    with pytest.raises(PaintError, match="--resume"):
        finetune(
            bundle3.model,
            [TrainingSet("colours", xtr, ytr, head3)],
            bundle3.spec,
            CFG,
            out_dir=tmp_path,
            fingerprint="x",
        )
    with pytest.raises(PaintError, match="different run"):
        finetune(
            bundle3.model,
            [TrainingSet("colours", xtr, ytr, head3)],
            bundle3.spec,
            CFG,
            out_dir=tmp_path,
            resume=True,
            fingerprint="y",
        )
    res = finetune(
        bundle3.model,
        [TrainingSet("colours", xtr, ytr, head3)],
        bundle3.spec,
        CFG,
        out_dir=tmp_path,
        resume=True,
        fingerprint="x",
    )
    assert res.resumed_from_epoch == 0
    got = bundle3.model.state_dict()
    for k in reference:
        torch.testing.assert_close(got[k], reference[k], rtol=1e-5, atol=1e-6)


def test_joint_training_scores_each_task_against_its_own_head(tiny_clip_dir):
    bundle, head, (xtr, ytr), (xte, yte) = _setup(tiny_clip_dir)
    head_b = zeroshot_head(bundle, ["circle", "square"], ["a photo of the {}."])
    yb = (ytr > 0).astype(np.int64)  # a second 2-class task on the same images
    cfg = FinetuneConfig(epochs=3, lr=3e-3, batch_size=32, warmup_steps=2, weight_decay=0.0)
    finetune(bundle.model, [TrainingSet("a", xtr, ytr, head), TrainingSet("b", xtr, yb, head_b)], bundle.spec, cfg)
    assert evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"] >= 0.85
    assert evaluate_split(bundle.model, head_b, xte, (yte > 0).astype(np.int64), bundle.spec)["accuracy"] >= 0.85


def test_augmented_finetuning_still_learns(tiny_clip_dir):
    bundle, head, (xtr, ytr), (xte, yte) = _setup(tiny_clip_dir)
    cfg = CFG.model_copy(update={"augment": "crop-flip"})
    finetune(bundle.model, [TrainingSet("colours", xtr, ytr, head)], bundle.spec, cfg)
    assert evaluate_split(bundle.model, head, xte, yte, bundle.spec)["accuracy"] >= 0.85


def test_tensorboard_logs_loss_and_lr_per_step_and_validation_accuracy_per_epoch(tiny_clip_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bundle, head, (xtr, ytr), (xte, yte) = _setup(tiny_clip_dir)
    cfg = CFG.model_copy(update={"log_with": "tensorboard"})
    plain = FinetuneConfig(**{**CFG.model_dump(), "log_with": None})
    assert cfg.identity() == plain.identity()  # logging never changes what is trained (resume, fingerprints)
    fit = finetune(
        bundle.model,
        [TrainingSet("colours", xtr, ytr, head)],
        bundle.spec,
        cfg,
        tmp_path / "finetune",
        val_sets=[TrainingSet("colours", xte, yte, head)],
    )
    (events,) = list((tmp_path / "finetune" / "tensorboard").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/val_accuracy/colours"} <= tags, tags
    assert len(acc.Scalars("train/loss")) == fit.steps  # one point per optimizer step
    assert len(acc.Scalars("epoch/val_accuracy/colours")) == CFG.epochs
    last = acc.Scalars("epoch/val_accuracy/colours")[-1].value
    assert last == pytest.approx(fit.history[-1]["val_accuracy/colours"])
    assert fit.history[-1]["val_accuracy/colours"] >= 0.9  # the colours task is learned, as the test above
