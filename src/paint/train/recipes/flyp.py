"""FLYP (Goyal et al. 2023): fine-tune like you pretrain, with CLIP's contrastive loss on both towers.

The captions are the class prompts: every training image is paired with ``template.format(class)``
for a template drawn per image and epoch (seeded, so a resumed run draws the same ones). The
loss is CLIP's symmetric cross-entropy over the batch's image-caption similarity matrix, with
the model's own (frozen) logit scale; two images of one class in a batch are negatives for each
other's captions, as in the paper. Both towers and both projections train, so theta_ft covers
both, and whoever scores the line rebuilds every task's head from the interpolated text tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from paint.data.preprocess import ImageSpec, normalize
from paint.errors import PaintError
from paint.models.clip import image_features, text_features
from paint.train.data import TrainingSet
from paint.train.recipes.base import (
    Coverage,
    Recipe,
    RecipeContext,
    RecipeResult,
    as_result,
    count_params,
    fit_tower,
    image_tower_names,
    is_text_tower_key,
)
from paint.train.recipes.registry import register


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss on B matched pairs: mean of the image->text and text->image cross-entropies.

    Args:
        image_embeds: (B, D) projected image features, not normalised.
        text_embeds: (B, D) projected caption features, row i the caption of image i.
        logit_scale: the model's log temperature (a scalar parameter).
    """
    img = F.normalize(image_embeds.float(), dim=-1)
    txt = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale.exp().float() * img @ txt.t()  # (B, B), row: image, column: caption
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def caption_table(sets: Sequence[TrainingSet], tokenizer, max_length: int) -> tuple[dict[str, torch.Tensor], list]:
    """Tokenised prompts of every (task, class, template), and per task (row offset, number of templates)."""
    texts, layout = [], []
    for s in sets:
        if not s.classnames or not s.templates:
            raise PaintError(f"flyp: task {s.name!r} has no class names and templates to caption its images with")
        layout.append((len(texts), len(s.templates)))
        texts += [t.format(c) for c in s.classnames for t in s.templates]  # class-major, as the heads
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, layout


class FlypLoss:
    """CLIP's contrastive loss of each batch against its images' class prompts (a template per image and epoch)."""

    def __init__(self, table: dict[str, torch.Tensor], layout: list, spec: ImageSpec, seed: int = 0):
        self.table, self.spec, self.seed = table, spec, seed
        self.offsets = torch.tensor([o for o, _ in layout])
        self.n_templates = torch.tensor([n for _, n in layout])
        self.generator = torch.Generator().manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + (1 << 61))

    def caption_rows(self, labels: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Row of each sample's caption in the table: its task's offset + class * T + a drawn template."""
        labels, task_ids = labels.cpu(), task_ids.cpu()
        n = self.n_templates[task_ids]
        draw = (torch.rand(len(labels), generator=self.generator) * n).long().clamp(max=n - 1)
        return self.offsets[task_ids] + labels * n + draw

    def __call__(self, model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        images, labels, task_ids = batch
        rows = self.caption_rows(labels, task_ids)
        device = images.device
        ids = self.table["input_ids"][rows].to(device)
        mask = self.table["attention_mask"][rows].to(device)
        pixels = normalize(images, self.spec.mean, self.spec.std)
        return contrastive_loss(image_features(model, pixels), text_features(model, ids, mask), model.logit_scale)


@register
class FlypRecipe(Recipe):
    """Contrastive fine-tuning of both towers, the class prompts as captions; the line covers both towers.

    Each image is paired with one of its class's prompts (a template drawn per image and epoch);
    the loss is CLIP's symmetric contrastive loss over the batch. The logit scale stays frozen.
    Heads on the line are rebuilt from the interpolated text tower.
    """

    name: Literal["flyp"] = "flyp"
    paper: ClassVar[str] = "Goyal et al. 2023, Finetune like you pretrain (arXiv:2212.00638)"
    covers: ClassVar[Coverage] = Coverage(text_tower=True)
    soupable: ClassVar[bool] = False  # a soup averages image towers only
    desc: ClassVar[str] = "fine-tune (flyp)"

    def trainable(self, model: torch.nn.Module) -> list[str]:
        """Every parameter of both towers and projections; the logit scale stays frozen."""
        image = set(image_tower_names(model))
        return [n for n, _ in model.named_parameters() if n in image or is_text_tower_key(n)]

    def run(self, ctx: RecipeContext) -> RecipeResult:
        """Contrastive fine-tuning of both towers on (image, class prompt) pairs."""
        if ctx.tokenizer is None:
            raise PaintError("flyp needs the model's tokenizer to caption the images")
        max_len = getattr(ctx.model.config.text_config, "max_position_embeddings", 77)
        table, layout = caption_table(ctx.sets, ctx.tokenizer, max_len)
        names = self.trainable(ctx.model)
        fit = fit_tower(ctx, names, FlypLoss(table, layout, ctx.spec, ctx.cfg.seed), self.desc)
        return as_result(fit, self.name, count_params(ctx.model, names), info={"captions": len(table["input_ids"])})
