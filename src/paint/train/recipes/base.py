"""What a fine-tuning recipe is, and what every recipe shares: the frozen-head loss, the context, the result.

A recipe is one class (mergekit's merge methods are the model): its pydantic fields are its
settings (``finetune.recipe: {name: lora, rank: 4}``), its class attributes say what its line
covers, and its methods are the hooks the rest of paint calls, never naming a recipe:

- :meth:`Recipe.check_model`: refuse a model the recipe cannot train, before any work;
- :meth:`Recipe.trainable` and :meth:`Recipe.loss`: what trains, against what; the default
  :meth:`Recipe.run` fine-tunes those on the shared loop, and a recipe that does more (a
  linear probe first, adapters to merge, several ingredients) overrides ``run``;
- :meth:`Recipe.coverage`: what theta_ft holds besides the image tower, hence what the line
  theta_zs -> theta_ft interpolates (the text tower, learned heads).

Every recipe fine-tunes ``ctx.model`` in place and leaves theta_ft in it (for LoRA, the merged
weights; for a soup, the average), so that the caller reads theta_ft from the model. A recipe is
registered with one line (:func:`paint.train.recipes.registry.register`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from paint.config import StrictModel
from paint.data.preprocess import ImageSpec, augment_batch, normalize
from paint.evaluation.results import logits_for
from paint.models.clip import image_features
from paint.models.families import family_of
from paint.train.data import TrainingSet, augment_generator, loader_workers, make_loader_factory
from paint.train.loop import LoopSettings, LossFn, fit
from paint.train.record import FitResult

# The text tower and its projection (CLIP's names; SigLIP's text head lies inside text_model).
TEXT_TOWER_PREFIXES = ("text_model.", "text_projection.")


@dataclass(frozen=True)
class Coverage:
    """What a recipe's theta_ft holds besides the image tower (always there), so what its line interpolates.

    Example:
        >>> from paint import FinetuneConfig
        >>> FinetuneConfig(recipe={"name": "lp-ft"}).recipe.coverage()
        Coverage(text_tower=False, learns_heads=True)
        >>> FinetuneConfig(recipe={"name": "flyp"}).recipe.coverage()
        Coverage(text_tower=True, learns_heads=False)
    """

    text_tower: bool = False  # both towers trained (flyp): each task's head is rebuilt from the interpolated text
    learns_heads: bool = False  # a learned head per patching task rides the state as ``head::<task>`` (lp-ft)


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


class FinetuneSettings(LoopSettings, Protocol):
    """What a recipe reads of :class:`paint.train.recipes.config.FinetuneConfig` (which imports the
    recipes, so they see it through this protocol)."""

    label_smoothing: float
    augment: str
    loader_workers: int | None
    log_with: str | None
    recipe: Any


@dataclass(frozen=True)
class RecipeContext:
    """Everything a recipe needs: the model (trained in place), data, settings, checkpoint place."""

    model: torch.nn.Module
    sets: Sequence[TrainingSet]
    spec: ImageSpec
    cfg: FinetuneSettings
    out_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    on_epoch_end: Callable[[int, torch.nn.Module], dict[str, float]] | None = None
    val_sets: Sequence[TrainingSet] = ()  # held-out data (greedy soups); never trained on
    tokenizer: Any = None  # the model's tokenizer (flyp's captions)

    def with_(self, **changes: Any) -> RecipeContext:
        return replace(self, **changes)


class Recipe(StrictModel):
    """A fine-tuning recipe: its fields are its settings, its methods the hooks paint calls.

    The base is PAINT's own recipe: the image tower trains against each task's frozen zero-shot
    head. A subclass names itself (``name: Literal["my-recipe"] = "my-recipe"``), cites its
    ``paper``, declares its settings as fields, and overrides what differs.

    Example:
        ```python
        from typing import Literal

        from paint import Recipe
        from paint.train.recipes.base import image_tower_names
        from paint.train.recipes.registry import register


        @register  # the one line: `finetune: {recipe: {name: last-block}}` now validates and runs
        class LastBlock(Recipe):
            name: Literal["last-block"] = "last-block"

            def trainable(self, model):
                return [n for n in image_tower_names(model) if ".layers.1." in n]
        ```
    """

    name: str
    paper: ClassVar[str] = ""
    covers: ClassVar[Coverage] = Coverage()  # what the line interpolates besides the image tower
    soupable: ClassVar[bool] = True  # may be a soup's base (a soup averages image towers and learned heads)
    desc: ClassVar[str] = "fine-tune"  # the progress bar's label

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse, with a one-line :class:`PaintError`, a model this recipe cannot train (called before any work)."""

    def coverage(self) -> Coverage:
        """What this recipe's line interpolates besides the image tower."""
        return self.covers

    def label(self) -> str:
        """The recipe as messages name it."""
        return self.name

    def trainable(self, model: torch.nn.Module) -> list[str]:
        """The parameters the optimiser updates (default: the image tower)."""
        return image_tower_names(model)

    def loss(self, ctx: RecipeContext) -> LossFn:
        """The training loss (default: each task's frozen head)."""
        return frozen_head_loss(ctx)

    def info(self) -> dict[str, Any]:
        """Facts for the run's summary (``recipe_info``)."""
        return {}

    def run(self, ctx: RecipeContext) -> RecipeResult:
        """Fine-tune ``ctx.model`` in place; it ends holding theta_ft."""
        names = self.trainable(ctx.model)
        fit_result = fit_tower(ctx, names, self.loss(ctx), self.desc)
        return as_result(fit_result, self.name, count_params(ctx.model, names), info=self.info())


def image_tower_names(model: torch.nn.Module) -> list[str]:
    """The image tower's parameter names, by the model family's prefixes (CLIP, SigLIP, ...)."""
    tower = family_of(model).is_image_tower_key
    return [n for n, _ in model.named_parameters() if tower(n)]


def is_text_tower_key(key: str) -> bool:
    """Whether a parameter belongs to the text tower or its projection (never the logit scale)."""
    return key.startswith(TEXT_TOWER_PREFIXES)


def count_params(model: torch.nn.Module, names: Sequence[str]) -> int:
    wanted = set(names)
    return sum(p.numel() for n, p in model.named_parameters() if n in wanted)


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
        self._on_device: list[torch.Tensor] = list(heads)
        self._device: torch.device | None = None

    def set_epoch(self, epoch: int) -> None:
        self.generator = augment_generator(self.seed, epoch)

    def heads_on(self, device: torch.device) -> list[torch.Tensor]:
        """The heads on ``device``, copied there once (not at every step: a host-to-GPU copy and a sync each)."""
        if self._device != device:
            self._on_device, self._device = [h.to(device) for h in self.heads], device
        return self._on_device

    def __call__(self, model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        images, labels, task_ids = batch
        if self.augment != "none":
            images = augment_batch(images, self.generator, flip=self.augment == "crop-flip")
        pixels = normalize(images, self.spec.mean, self.spec.std)
        ls = self.label_smoothing
        heads = self.heads_on(pixels.device)
        if len(heads) == 1:
            logits = logits_for(model, heads[0], pixels)  # (B, C)
            return F.cross_entropy(logits, labels, label_smoothing=ls)
        feats = F.normalize(image_features(model, pixels).float(), dim=-1)  # (B, D), computed once
        total = feats.new_zeros(())
        for t, head in enumerate(heads):
            mask = task_ids == t
            if mask.any():
                logits = feats[mask] @ head.t()  # (B_t, C_t)
                total = total + F.cross_entropy(logits, labels[mask], label_smoothing=ls, reduction="sum")
        return total / len(labels)


def frozen_head_loss(ctx: RecipeContext, heads: Sequence[torch.Tensor] | None = None) -> FrozenHeadLoss:
    """The frozen-head loss of ``ctx`` (its sets' own heads unless ``heads`` replaces them)."""
    hs = [h.detach().float() for h in (heads if heads is not None else [s.head for s in ctx.sets])]
    return FrozenHeadLoss(hs, ctx.spec, ctx.cfg.label_smoothing, ctx.cfg.augment, ctx.cfg.seed)


def fit_tower(ctx: RecipeContext, trainable: list[str], loss_fn: LossFn, desc: str = "fine-tune") -> FitResult:
    """Run the shared loop on ``trainable`` with ``ctx``'s data, settings and checkpoint."""
    on_gpu = torch.cuda.is_available() and not ctx.cfg.cpu
    workers = loader_workers(ctx.cfg.loader_workers, on_gpu)
    return fit(
        ctx.model,
        trainable,
        make_loader_factory(ctx.sets, ctx.cfg.batch_size, ctx.cfg.seed, workers, pin_memory=on_gpu),
        loss_fn,
        ctx.cfg,
        checkpoint_dir=ctx.out_dir,
        resume=ctx.resume,
        fingerprint=ctx.fingerprint,
        desc=desc,
        on_epoch_end=ctx.on_epoch_end,
        log_with=ctx.cfg.log_with,
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
