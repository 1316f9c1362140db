"""L2-SP (Li et al. 2018): frozen-head plus a pull toward theta_zs, the start of the fine-tune."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from paint.train.loop import LossFn
from paint.train.recipes.base import FrozenHeadLoss, Recipe, RecipeContext, frozen_head_loss
from paint.train.recipes.registry import register


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


@register
class L2SPRecipe(Recipe):
    """Frozen-head plus ``strength * ||theta - theta_zs||^2`` over the trained image-tower tensors.

    ``strength`` is the paper's lambda (a sum over every tensor, not a mean); AdamW's own weight
    decay still applies as configured (set ``weight_decay: 0`` for the paper's form).
    """

    name: Literal["l2-sp"] = "l2-sp"
    strength: float = Field(0.01, ge=0, description="lambda of the L2-SP penalty")
    paper: ClassVar[str] = "Li et al. 2018, Explicit Inductive Bias for Transfer Learning with CNNs (arXiv:1802.01483)"

    def loss(self, ctx: RecipeContext) -> LossFn:
        params = dict(ctx.model.named_parameters())
        anchors = {n: params[n].detach().clone() for n in self.trainable(ctx.model)}
        return L2SPLoss(frozen_head_loss(ctx), anchors, float(self.strength))

    def info(self) -> dict[str, Any]:
        return {"strength": float(self.strength)}
