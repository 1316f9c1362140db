"""Fine-tune the image tower with the zero-shot heads frozen (PAINT's recipe).

Only ``vision_model.*`` and ``visual_projection.*`` train; the text tower, the text projection
and the logit scale stay bit-identical, and no parameter is added: the classifier is the
frozen zero-shot head, so the fine-tuned tower stays compatible with the text side and can
be interpolated with the zero-shot one. Several tasks at once (joint patching) are scored
each against its own head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader, TensorDataset

from paint.config import StrictModel
from paint.data.preprocess import ImageSpec, normalize
from paint.evaluation.results import logits_for
from paint.models.clip import image_features
from paint.models.families import family_of
from paint.train.loop import FitResult, LoopConfig, fit


class FinetuneConfig(StrictModel):
    """The PAINT recipe's knobs (defaults: the official code's, for ViT-L/14 use lr 1e-5)."""

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(500, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    max_steps: int | None = Field(None, ge=1)
    cpu: bool = False
    # Training augmentation on the cached uint8 images: random resized crop, optionally with a
    # horizontal flip (not for digits, text or traffic signs, where a flip changes the class).
    augment: Literal["none", "crop", "crop-flip"] = "none"


@dataclass(frozen=True)
class TrainingSet:
    """One task's training data: uint8 images (N, 3, S, S), labels (N,), frozen head (C, D)."""

    name: str
    images: torch.Tensor
    labels: np.ndarray
    head: torch.Tensor


def image_tower_names(model: torch.nn.Module) -> list[str]:
    tower = family_of(model).is_image_tower_key  # the model family's prefixes (CLIP, SigLIP, ...)
    return [n for n, _ in model.named_parameters() if tower(n)]


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The crop/flip generator of one epoch: a function of (seed, epoch) alone.

    Seeding per epoch (rather than once per process) is what makes a run resumed after epoch
    k draw the same crops as an uninterrupted one. The offset keeps this stream apart from
    the loader's shuffle, which is seeded from the same (seed, epoch).
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + (1 << 62))


class FrozenHeadLoss:
    """Mean cross-entropy of each sample against its own task's frozen head, after augmentation.

    :func:`paint.train.loop.fit` calls :meth:`set_epoch` before each epoch (as PyTorch's
    ``DistributedSampler.set_epoch``), which reseeds the augmentation.
    """

    def __init__(
        self, heads: list[torch.Tensor], spec: ImageSpec, label_smoothing: float, augment: str = "none", seed: int = 0
    ):
        self.heads, self.spec, self.label_smoothing = heads, spec, label_smoothing
        self.augment, self.seed = augment, seed
        self.generator = augment_generator(seed, 0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = augment_generator(self.seed, epoch)

    def __call__(self, model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        images, labels, task_ids = batch
        if self.augment != "none":
            from paint.data.preprocess import augment_batch

            images = augment_batch(images, self.generator, flip=self.augment == "crop-flip")
        pixels = normalize(images, self.spec.mean, self.spec.std)
        ls = self.label_smoothing
        if len(self.heads) == 1:
            logits = logits_for(model, self.heads[0], pixels)  # (B, C)
            return F.cross_entropy(logits, labels, label_smoothing=ls)
        feats = F.normalize(image_features(model, pixels).float(), dim=-1)  # (B, D), computed once
        total = feats.new_zeros(())
        for t, head in enumerate(self.heads):
            mask = task_ids == t
            if mask.any():
                logits = feats[mask] @ head.t().to(feats.device)  # (B_t, C_t)
                total = total + F.cross_entropy(logits, labels[mask], label_smoothing=ls, reduction="sum")
        return total / len(labels)


def make_loss(
    heads: list[torch.Tensor],
    spec: ImageSpec,
    label_smoothing: float,
    augment: str = "none",
    seed: int = 0,
) -> FrozenHeadLoss:
    """Mean cross-entropy of each sample against its own task's frozen head (augmentation reseeded per epoch)."""
    return FrozenHeadLoss(heads, spec, label_smoothing, augment, seed)


def finetune(
    model: torch.nn.Module,
    sets: list[TrainingSet],
    spec: ImageSpec,
    cfg: FinetuneConfig,
    out_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    on_epoch_end: Callable[[int, torch.nn.Module], dict[str, float]] | None = None,
) -> FitResult:
    """Fine-tune ``model``'s image tower in place on ``sets`` (one task, or several jointly).

    Args:
        model: a transformers CLIPModel.
        sets: training data and frozen head per task.
        spec: the checkpoint's preprocessing (mean/std for on-the-fly normalisation).
        cfg: optimisation settings.
        out_dir: where the epoch-end checkpoint goes (``out_dir/checkpoint``).
        resume: continue from that checkpoint.
        fingerprint: identity of the run's inputs (a checkpoint of another run is refused).
        on_epoch_end: optional validation callback.
    """
    images = torch.cat([s.images for s in sets])
    labels = torch.as_tensor(np.concatenate([np.asarray(s.labels) for s in sets]), dtype=torch.long)
    task_ids = torch.cat([torch.full((len(s.labels),), i, dtype=torch.long) for i, s in enumerate(sets)])
    dataset = TensorDataset(images, labels, task_ids)
    heads = [s.head.detach().float() for s in sets]

    def make_loader(epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=False)

    loop = LoopConfig.from_settings(cfg)
    return fit(
        model,
        image_tower_names(model),
        make_loader,
        make_loss(heads, spec, cfg.label_smoothing, cfg.augment, cfg.seed),
        loop,
        checkpoint_dir=out_dir,
        resume=resume,
        fingerprint=fingerprint,
        desc="fine-tune",
        on_epoch_end=on_epoch_end,
    )
