"""LoRA (Hu et al. 2021) on the image tower, through peft; the merged low-rank delta is what alpha scales.

Adapters go on the image tower's Linear layers named in ``target_modules`` (attention and MLP
projections by default); only the adapters train, against the frozen zero-shot heads. After
training each delta ``B @ A * lora_alpha / rank`` is added to its base weight, the adapters are
removed, and the model holds theta_ft = theta_zs + delta, a plain CLIP image tower. Tensors
without an adapter (norms, embeddings, biases) stay bit-identical to theta_zs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from paint.errors import PaintError
from paint.train.recipes.base import Recipe, RecipeContext, RecipeResult, as_result, count_params, fit_tower
from paint.train.recipes.registry import register
from paint.types import is_image_tower_key

ADAPTER = "default"


def lora_targets(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Full names of the image tower's Linear layers whose last name component is in ``names``."""
    wanted = set(names)
    found = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and is_image_tower_key(n + ".") and n.rsplit(".", 1)[-1] in wanted
    ]
    if not found:
        raise PaintError(
            f"lora: no Linear layer of the image tower is named {', '.join(sorted(wanted))}; "
            "set finetune.recipe.target_modules (e.g. q_proj, k_proj, v_proj, out_proj, fc1, fc2)"
        )
    return found


@register
class LoraRecipe(Recipe):
    """Low-rank adapters (through peft) on the image tower's projections; the merged delta is theta_ft - theta_zs."""

    name: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0, description="peft's lora_alpha: the delta is scaled by lora_alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        min_length=1,
        description="names of the image tower's Linear layers that get adapters",
    )
    paper: ClassVar[str] = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)"

    def check_model(self, model: nn.Module) -> None:
        lora_targets(model, self.target_modules)

    def run(self, ctx: RecipeContext) -> RecipeResult:
        """Train LoRA adapters on the image tower; leave theta_zs + merged delta in the model."""
        start = {k: v.detach().clone() for k, v in ctx.model.state_dict().items() if is_image_tower_key(k)}
        targets = inject_lora(ctx.model, self, ctx.cfg.seed)
        try:
            trainable = lora_trainable(ctx.model)
            n_trainable = count_params(ctx.model, trainable)
            fit = fit_tower(ctx, trainable, self.loss(ctx))
            deltas = merged_deltas(ctx.model, targets)
        finally:
            remove_lora(ctx.model, targets)
        merged = {k: (start[k].float() + d).to(start[k].dtype) for k, d in deltas.items()}
        ctx.model.load_state_dict({**start, **merged}, strict=False)
        tower = sum(v.numel() for v in start.values() if v.is_floating_point())
        info = {"rank": self.rank, "lora_alpha": self.lora_alpha, "adapted_layers": len(targets), "tower_params": tower}
        return as_result(fit, self.name, n_trainable, info=info)


def inject_lora(model: nn.Module, spec: LoraRecipe, seed: int = 0) -> list[str]:
    """Add peft LoRA adapters in place (A seeded by ``seed``, B zero); return the adapted layers' names."""
    from peft import LoraConfig, inject_adapter_in_model  # heavy (seconds to import); only this recipe uses it

    targets = lora_targets(model, spec.target_modules)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    return targets


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """The merged weight delta (out, in) of one adapter: ``(B @ A) * scaling``, B (out, r), A (r, in)."""
    return (lora_b.float() @ lora_a.float()) * scaling


def merged_deltas(model: nn.Module, targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{"<layer>.weight": delta}`` of every adapted layer, computed from the adapter tensors."""
    modules = dict(model.named_modules())
    out = {}
    for name in targets:
        layer = modules[name]
        a = layer.lora_A[ADAPTER].weight.detach()
        b = layer.lora_B[ADAPTER].weight.detach()
        out[f"{name}.weight"] = lora_delta(a, b, float(layer.scaling[ADAPTER])).cpu()
    return out


def remove_lora(model: nn.Module, targets: Sequence[str]) -> None:
    """Put each adapted layer's base Linear back in its place (unmerged): the model is plain CLIP again."""
    modules = dict(model.named_modules())
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, modules[name].base_layer)
    if "peft_config" in vars(model):  # peft's record of the injection: a later injection would warn of two adapters
        del model.peft_config


def lora_trainable(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".lora_" in n]
