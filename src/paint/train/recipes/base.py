"""What every recipe shares: training sets, the frozen-head loss, the context a recipe runs in, its result.

A recipe is a function ``run(ctx) -> RecipeResult`` that fine-tunes ``ctx.model`` in place and
leaves theta_ft in its image tower (for LoRA, the merged weights; for a soup, the average), so
that the caller reads theta_ft from the model as it always has.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from paint.data.preprocess import ImageSpec, normalize
from paint.data.rows import cache_file, read_rows
from paint.evaluation.results import logits_for
from paint.models.clip import image_features
from paint.models.families import family_of
from paint.train.loop import FitResult, LoopConfig, fit
from paint.train.recipes.config import FinetuneConfig


@dataclass(frozen=True)
class TrainingSet:
    """One task's training data: uint8 images (N, 3, S, S), labels (N,), frozen head (C, D).

    ``images`` is a tensor or a numpy array; the preprocessing cache's memory map is read a batch
    at a time (:class:`TrainingBatches`), so a training set need not fit in memory.

    ``classnames`` and ``templates`` are the prompts the head was built from (the flyp recipe's captions).
    """

    name: str
    images: torch.Tensor | np.ndarray
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
            from paint.data.preprocess import augment_batch

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


class TrainingBatches(Dataset):
    """Every set's (image, label, task index) as one indexable dataset, read a batch at a time.

    Nothing is concatenated: a batch's rows are read from each set's images as they are (a cache
    file through a map that lives for that batch, see :func:`paint.data.rows.read_rows`), so a
    fine-tuning epoch needs one batch of images in memory, not the training set (SVHN at 224 px
    is 11 GB). The DataLoader hands :meth:`__getitems__` a whole batch of indices at once.
    Pickled for a loader worker, a cache file travels as its path, not its contents.
    """

    def __init__(self, sets: Sequence[TrainingSet]):
        self.images = [s.images for s in sets]
        sizes = [len(s.labels) for s in sets]
        self.offsets = np.cumsum([0] + sizes)  # global index of each set's row 0
        self.labels = torch.as_tensor(np.concatenate([np.asarray(s.labels) for s in sets]), dtype=torch.long)
        self.task_ids = torch.repeat_interleave(torch.arange(len(sets)), torch.as_tensor(sizes))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, task_ids = self.__getitems__([index])
        return images[0], labels[0], task_ids[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 images (B, 3, S, S), labels (B,), task indices (B,)) of ``indices``, in their order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        task_ids = self.task_ids[idx]
        if len(self.images) == 1:
            images = read_rows(self.images[0], idx.numpy())
        else:
            images = torch.empty((len(idx),) + tuple(self.images[0].shape[1:]), dtype=torch.uint8)
            for t in torch.unique(task_ids).tolist():
                where = (task_ids == t).nonzero().flatten()
                images[where] = read_rows(self.images[t], (idx[where] - int(self.offsets[t])).numpy())
        return images, self.labels[idx], task_ids

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["images"] = [("cache file", cache_file(x)) if cache_file(x) else x for x in self.images]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["images"] = [np.load(x[1], mmap_mode="c") if isinstance(x, tuple) else x for x in state["images"]]
        self.__dict__.update(state)


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function: :meth:`TrainingBatches.__getitems__` already returns a batch."""
    return batch


def make_loader_factory(
    sets: Sequence[TrainingSet], batch_size: int, seed: int, workers: int = 0, pin_memory: bool = False
) -> Callable[[int], DataLoader]:
    """epoch -> shuffled loader over every set's (image, label, task index); the shuffle is seeded by (seed, epoch).

    The batches do not depend on ``workers``: the shuffle is drawn in this process and each worker
    only reads the rows it is handed (augmentation happens later, in the loss, from its own seed).
    """
    dataset = TrainingBatches(sets)

    def make_loader(epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=g,
            drop_last=False,
            collate_fn=_as_batch,
            num_workers=workers,
            pin_memory=pin_memory,
        )

    return make_loader


def loader_workers(requested: int | None, on_gpu: bool) -> int:
    """Training-loader worker processes: as asked, else 0 on a CPU (the step dominates) and up to 4 on a GPU.

    On a GPU a step of ViT-B/32 takes a few tens of milliseconds, as long as reading and copying
    its batch; workers read the next batches while the device computes.
    """
    if requested is not None:
        return requested
    if not on_gpu:
        return 0
    return min(4, max(1, len(os.sched_getaffinity(0)) - 1))


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
    """Run the shared loop on ``trainable`` with ``ctx``'s data, settings and checkpoint."""
    on_gpu = torch.cuda.is_available() and not ctx.cfg.cpu
    workers = loader_workers(ctx.cfg.loader_workers, on_gpu)
    return fit(
        ctx.model,
        trainable,
        make_loader_factory(ctx.sets, ctx.cfg.batch_size, ctx.cfg.seed, workers, pin_memory=on_gpu),
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
