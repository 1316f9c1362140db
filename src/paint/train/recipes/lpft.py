"""LP-FT (Kumar et al. 2022): fit each patching task's head on frozen features, then fine-tune against it.

Stage 1 (the linear probe) starts from the zero-shot head (C, D), which carries CLIP's logit
scale, and runs L-BFGS on cross-entropy over the normalised image features of the training
set, computed once with the start tower. Stage 2 is the frozen-head recipe with the learned
heads in place of the zero-shot ones. The heads are written next to the checkpoint
(``probe-heads.safetensors``) so a resumed run trains against the same ones, and returned in
:attr:`RecipeResult.heads` so the caller scores the patching tasks with them (every other task
keeps its text head).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file

from paint.data.preprocess import ImageSpec, normalize
from paint.data.rows import read_rows
from paint.errors import PaintError
from paint.models.clip import image_features
from paint.train.recipes.base import (
    Coverage,
    Recipe,
    RecipeContext,
    RecipeResult,
    as_result,
    count_params,
    fit_tower,
    frozen_head_loss,
)
from paint.train.recipes.registry import register
from paint.utils import atomic_path

PROBE_HEADS = "probe-heads.safetensors"


@torch.no_grad()
def probe_features(
    model: torch.nn.Module, images: torch.Tensor, spec: ImageSpec, batch_size: int = 256
) -> torch.Tensor:
    """Normalised image features (N, D), float32 on the CPU, of uint8 images (N, 3, S, S), in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(images), batch_size):
            pixels = normalize(read_rows(images, slice(i, i + batch_size)).to(device), spec.mean, spec.std)
            out.append(F.normalize(image_features(model, pixels).float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def probe_loss(head: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, head0: torch.Tensor, l2: float):
    """Mean cross-entropy of ``feats @ head.T`` plus ``l2 * ||head - head0||^2``."""
    loss = F.cross_entropy(feats @ head.t(), labels)
    if l2 > 0:
        loss = loss + l2 * (head - head0).pow(2).sum()
    return loss


def fit_probe(
    feats: torch.Tensor, labels: np.ndarray | torch.Tensor, head0: torch.Tensor, steps: int = 100, l2: float = 0.0
) -> torch.Tensor:
    """Linear probe (C, D) on fixed features (N, D) by L-BFGS, started from ``head0`` (a zero-shot head).

    Deterministic (full batch, no randomness), so a resumed run could refit the same head.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    x = feats.float()
    w0 = head0.detach().float().cpu()
    if int(y.max()) >= w0.shape[0] or int(y.min()) < 0:
        raise PaintError(f"linear probe: labels span 0..{int(y.max())} but the head has {w0.shape[0]} classes")
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = probe_loss(w, x, y, w0, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def _load_heads(path: Path, names: Sequence[str]) -> dict[str, torch.Tensor] | None:
    try:
        heads = load_file(str(path))
    except Exception as e:  # a damaged file: refit (the probe is deterministic)
        raise PaintError(f"cannot read the learned heads {path} ({e}); delete the run's finetune directory") from e
    return heads if set(heads) == set(names) else None


@register
class LPFTRecipe(Recipe):
    """Linear probe (heads fitted on frozen features, from the zero-shot heads) then fine-tune against them."""

    name: Literal["lp-ft"] = "lp-ft"
    probe_steps: int = Field(100, ge=1, description="L-BFGS iterations of the linear probe")
    probe_l2: float = Field(0.0, ge=0, description="weight of ||W - W_zs||^2 in the probe's loss")
    paper: ClassVar[str] = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features (arXiv:2202.10054)"
    covers: ClassVar[Coverage] = Coverage(learns_heads=True)

    def probe_heads(self, ctx: RecipeContext) -> dict[str, torch.Tensor]:
        """Each patching task's learned head: read back on resume, else fitted and written beside the checkpoint."""
        names = [s.name for s in ctx.sets]
        path = ctx.out_dir / PROBE_HEADS if ctx.out_dir is not None else None
        heads = _load_heads(path, names) if (path is not None and ctx.resume and path.is_file()) else None
        if heads is not None:
            return heads
        heads = {}
        for s in ctx.sets:
            feats = probe_features(ctx.model, s.images, ctx.spec)
            heads[s.name] = fit_probe(feats, s.labels, s.head, self.probe_steps, self.probe_l2)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in heads.items()}, str(tmp))
        return heads

    def run(self, ctx: RecipeContext) -> RecipeResult:
        """Linear probe from the zero-shot heads, then fine-tune the image tower against the learned heads."""
        heads = self.probe_heads(ctx)
        tower = self.trainable(ctx.model)
        fit = fit_tower(ctx, tower, frozen_head_loss(ctx, [heads[s.name] for s in ctx.sets]))
        return as_result(
            fit,
            self.name,
            count_params(ctx.model, tower),
            heads={k: v.clone() for k, v in heads.items()},
            info={"probe_params": sum(int(h.numel()) for h in heads.values()), "heads_file": PROBE_HEADS},
        )
