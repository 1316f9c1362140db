"""What every recipe shares: training sets, the frozen-head loss, the context a recipe runs in, its result.

A recipe is a function ``run(ctx) -> RecipeResult`` that fine-tunes ``ctx.model`` in place and
leaves theta_ft in its image tower (for LoRA, the merged weights; for a soup, the average), so
that the caller reads theta_ft from the model as it always has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from paint.data.preprocess import ImageSpec, normalize
from paint.evaluation.results import logits_for
from paint.models.clip import image_features
from paint.models.families import family_of
from paint.train.loop import FitResult, LoopConfig, fit
from paint.train.recipes.config import FinetuneConfig


@dataclass(frozen=True)
class TrainingSet:
    """One task's training data: uint8 images (N, 3, S, S), labels (N,), frozen head (C, D).

    ``classnames`` and ``templates`` are the prompts the head was built from (the flyp recipe's captions).
    """

    name: str
    images: torch.Tensor
    labels: np.ndarray
    head: torch.Tensor
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


@dataclass
class RecipeResult(FitResult):
    """The loop's record plus what a recipe adds.

    Attributes:
        recipe: the recipe's name.
        heads: learned heads by task name (lp-ft); empty when every task keeps its zero-shot head.
        trainable_params: parameters the optimiser updated (per ingredient for a soup).
        info: recipe-specific facts for the summary (LoRA rank, soup ingredients, ...).
    """

    recipe: str = "frozen-head"
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    trainable_params: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    text_tower: bool = False  # the text tower trained too (flyp): theta_ft covers both towers


@dataclass(frozen=True)
class RecipeContext:
    """Everything a recipe needs: the model (trained in place), data, settings, checkpoint place."""

    model: torch.nn.Module
    sets: Sequence[TrainingSet]
    spec: ImageSpec
    cfg: FinetuneConfig
    out_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    on_epoch_end: Callable[[int, torch.nn.Module], dict[str, float]] | None = None
    val_sets: Sequence[TrainingSet] = ()  # held-out data (greedy soups); never trained on
    tokenizer: Any = None  # the model's tokenizer (flyp's captions)

    def with_(self, **changes: Any) -> RecipeContext:
        return replace(self, **changes)


def image_tower_names(model: torch.nn.Module) -> list[str]:
    """The image tower's parameter names, by the model family's prefixes (CLIP, SigLIP, ...)."""
    tower = family_of(model).is_image_tower_key
    return [n for n, _ in model.named_parameters() if tower(n)]


def count_params(model: torch.nn.Module, names: Sequence[str]) -> int:
    wanted = set(names)
    return sum(p.numel() for n, p in model.named_parameters() if n in wanted)


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


def make_loader_factory(sets: Sequence[TrainingSet], batch_size: int, seed: int) -> Callable[[int], DataLoader]:
    """epoch -> shuffled loader over every set's (image, label, task index); the shuffle is seeded by (seed, epoch)."""
    images = torch.cat([s.images for s in sets])
    labels = torch.as_tensor(np.concatenate([np.asarray(s.labels) for s in sets]), dtype=torch.long)
    task_ids = torch.cat([torch.full((len(s.labels),), i, dtype=torch.long) for i, s in enumerate(sets)])
    dataset = TensorDataset(images, labels, task_ids)

    def make_loader(epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=False)

    return make_loader


def frozen_head_loss(ctx: RecipeContext, heads: Sequence[torch.Tensor] | None = None) -> FrozenHeadLoss:
    """The frozen-head loss of ``ctx`` (its sets' own heads unless ``heads`` replaces them)."""
    hs = [h.detach().float() for h in (heads if heads is not None else [s.head for s in ctx.sets])]
    return FrozenHeadLoss(hs, ctx.spec, ctx.cfg.label_smoothing, ctx.cfg.augment, ctx.cfg.seed)


def fit_tower(
    ctx: RecipeContext,
    trainable: list[str],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    desc: str = "fine-tune",
) -> FitResult:
    """Run the shared loop on ``trainable`` with ``loss_fn`` and ``ctx``'s data, settings and checkpoint."""
    return fit(
        ctx.model,
        trainable,
        make_loader_factory(ctx.sets, ctx.cfg.batch_size, ctx.cfg.seed),
        loss_fn,
        LoopConfig.from_settings(ctx.cfg),
        checkpoint_dir=ctx.out_dir,
        resume=ctx.resume,
        fingerprint=ctx.fingerprint,
        desc=desc,
        on_epoch_end=ctx.on_epoch_end,
    )


def as_result(fit_result: FitResult, recipe: str, trainable_params: int, **extra: Any) -> RecipeResult:
    """A loop record as a :class:`RecipeResult`."""
    return RecipeResult(
        history=fit_result.history,
        steps=fit_result.steps,
        resumed_from_epoch=fit_result.resumed_from_epoch,
        runtime=fit_result.runtime,
        recipe=recipe,
        trainable_params=trainable_params,
        **extra,
    )
