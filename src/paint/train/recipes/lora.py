"""LoRA (Hu et al. 2021) on the image tower, through peft; the merged low-rank delta is what alpha scales.

Adapters go on the image tower's Linear layers named in ``target_modules`` (attention and MLP
projections by default); only the adapters train, against the frozen zero-shot heads. After
training each delta ``B @ A * lora_alpha / rank`` is added to its base weight, the adapters are
removed, and the model holds theta_ft = theta_zs + delta, a plain CLIP image tower. Tensors
without an adapter (norms, embeddings, biases) stay bit-identical to theta_zs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from paint.errors import PaintError
from paint.train.recipes.base import RecipeContext, RecipeResult, as_result, count_params, fit_tower, frozen_head_loss
from paint.train.recipes.config import LoraRecipe
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


def inject_lora(model: nn.Module, spec: LoraRecipe, seed: int = 0) -> list[str]:
    """Add peft LoRA adapters in place (A seeded by ``seed``, B zero); return the adapted layers' names."""
    from peft import LoraConfig, inject_adapter_in_model

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


def run_lora(ctx: RecipeContext) -> RecipeResult:
    """Train LoRA adapters on the image tower; leave theta_zs + merged delta in the model."""
    spec = ctx.cfg.recipe
    assert isinstance(spec, LoraRecipe)
    start = {k: v.detach().clone() for k, v in ctx.model.state_dict().items() if is_image_tower_key(k)}
    targets = inject_lora(ctx.model, spec, ctx.cfg.seed)
    try:
        trainable = lora_trainable(ctx.model)
        n_trainable = count_params(ctx.model, trainable)
        fit = fit_tower(ctx, trainable, frozen_head_loss(ctx))
        deltas = merged_deltas(ctx.model, targets)
    finally:
        remove_lora(ctx.model, targets)
    merged = {k: (start[k].float() + d).to(start[k].dtype) for k, d in deltas.items()}
    ctx.model.load_state_dict({**start, **merged}, strict=False)
    tower = sum(v.numel() for v in start.values() if v.is_floating_point())
    return as_result(
        fit,
        "lora",
        n_trainable,
        info={"rank": spec.rank, "lora_alpha": spec.lora_alpha, "adapted_layers": len(targets), "tower_params": tower},
    )
