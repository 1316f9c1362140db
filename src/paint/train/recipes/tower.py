"""Recipes that train every image-tower tensor against frozen heads: frozen-head (PAINT) and L2-SP."""

from __future__ import annotations

from typing import Any

import torch

from paint.train.recipes.base import (
    FrozenHeadLoss,
    RecipeContext,
    RecipeResult,
    as_result,
    count_params,
    fit_tower,
    frozen_head_loss,
    image_tower_names,
)


def run_frozen_head(ctx: RecipeContext) -> RecipeResult:
    """PAINT: cross-entropy against each task's frozen zero-shot head; only the image tower trains."""
    names = image_tower_names(ctx.model)
    fit = fit_tower(ctx, names, frozen_head_loss(ctx))
    return as_result(fit, "frozen-head", count_params(ctx.model, names))


class L2SPLoss:
    """The frozen-head loss plus ``strength * sum_k ||theta_k - theta_zs_k||^2`` over the trained tensors.

    The anchors are snapshots taken before training (a resumed run snapshots the same start
    state, since the loop loads the checkpoint afterwards); they follow the parameters' device.
    """

    def __init__(self, base: FrozenHeadLoss, anchors: dict[str, torch.Tensor], strength: float):
        self.base, self.anchors, self.strength = base, anchors, strength

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        total = None
        for name, p in model.named_parameters():
            anchor = self.anchors.get(name)
            if anchor is None:
                continue
            if anchor.device != p.device:
                anchor = self.anchors[name] = anchor.to(p.device)
            term = (p.float() - anchor.float()).pow(2).sum()
            total = term if total is None else total + term
        assert total is not None, "no anchored parameter"
        return total

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        loss = self.base(model, batch)
        if self.strength == 0:
            return loss
        return loss + self.strength * self.penalty(model)


def run_l2sp(ctx: RecipeContext) -> RecipeResult:
    """L2-SP (Li et al. 2018): frozen-head plus a pull toward theta_zs, the start of the fine-tune."""
    names = image_tower_names(ctx.model)
    params = dict(ctx.model.named_parameters())
    anchors = {n: params[n].detach().clone() for n in names}
    strength = float(ctx.cfg.recipe.strength)  # type: ignore[union-attr]
    fit = fit_tower(ctx, names, L2SPLoss(frozen_head_loss(ctx), anchors, strength))
    return as_result(fit, "l2-sp", count_params(ctx.model, names), info={"strength": strength})
