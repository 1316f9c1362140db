"""Soups (Wortsman et al. 2022): several fine-tunes of one recipe, averaged, then interpolated with theta_zs.

Each ingredient is the base recipe from the same start with one seed or one learning rate of
the list, checkpointed in ``ingredient-<i>/`` (so a resumed soup skips finished ingredients).
``uniform`` averages them all; ``greedy`` adds them in order of held-out accuracy on the
patching tasks' validation data and keeps one only if the soup's accuracy does not fall. Learned
heads (an lp-ft base) are averaged with the towers, as extra entries of the same state.

The base is any registered recipe whose line is the image tower and learned heads (``soupable``);
it is imported after them (:mod:`paint.train.recipes`), so that ``--set`` reaches their settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from paint.errors import PaintError
from paint.evaluation.results import evaluate_split
from paint.train.recipes.base import Coverage, Recipe, RecipeContext, RecipeResult, as_result
from paint.train.recipes.frozen_head import FrozenHeadRecipe
from paint.train.recipes.registry import recipe_field, register
from paint.train.record import FitResult
from paint.types import PatchState, StateDict, is_image_tower_key
from paint.weights.soup import greedy_soup
from paint.weights.stream import merge_state_dicts

SoupBase = recipe_field(lambda cls: cls.soupable, "a soup's base")


@register
class SoupRecipe(Recipe):
    """Several fine-tunes of one recipe (a seed or a learning rate each), averaged, then interpolated."""

    name: Literal["soup"] = "soup"
    base: SoupBase = Field(default_factory=FrozenHeadRecipe)
    seeds: list[int] | None = Field(None, min_length=1, description="one ingredient per seed")
    lrs: list[float] | None = Field(None, min_length=1, description="one ingredient per learning rate")
    method: Literal["uniform", "greedy"] = "uniform"
    paper: ClassVar[str] = "Wortsman et al. 2022, Model soups (arXiv:2203.05482)"
    soupable: ClassVar[bool] = False

    @field_validator("lrs")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(x <= 0 for x in v):
            raise ValueError("every learning rate must be > 0")
        return v

    @model_validator(mode="after")
    def _one_list(self):
        if (self.seeds is None) == (self.lrs is None):
            raise ValueError("a soup needs exactly one of seeds or lrs (one ingredient per entry)")
        return self

    def ingredients(self) -> list[dict[str, Any]]:
        """The fine-tuning overrides of each ingredient: ``[{"seed": 0}, ...]`` or ``[{"lr": 1e-4}, ...]``."""
        if self.seeds is not None:
            return [{"seed": s} for s in self.seeds]
        return [{"lr": lr} for lr in self.lrs or []]

    def check_model(self, model: nn.Module) -> None:
        self.base.check_model(model)

    def coverage(self) -> Coverage:
        return self.base.coverage()  # the average of the base's fine-tunes: its line

    def label(self) -> str:
        return f"soup of {self.base.label()}"

    def run(self, ctx: RecipeContext) -> RecipeResult:
        """Fine-tune every ingredient from the model's current tower, then average them into the model."""
        if self.method == "greedy" and not ctx.val_sets:
            raise PaintError("a greedy soup needs held-out validation data of the patching tasks")
        start = tower_state(ctx.model)
        states, records, trainable = [], [], 0
        history: list[dict] = []
        runtime: dict = {}
        for i, overrides in enumerate(self.ingredients()):
            ctx.model.load_state_dict(start, strict=False)
            sub = ctx.with_(
                cfg=ingredient_config(ctx.cfg, self, overrides),
                out_dir=ctx.out_dir / f"ingredient-{i}" if ctx.out_dir is not None else None,
                fingerprint=f"{ctx.fingerprint}/ingredient-{i}",
            )
            r = sub.cfg.recipe.run(sub)
            states.append(PatchState(tower_state(ctx.model), heads=r.heads))  # learned heads average too
            records.append({**overrides, "steps": r.steps, "final_loss": r.history[-1]["loss"] if r.history else None})
            history += [dict(h, ingredient=i) for h in r.history]
            trainable = r.trainable_params
            runtime = r.runtime  # every ingredient runs with the same settings on the same device
        info: dict = {"ingredients": records, "method": self.method, "base": self.base.name}
        if self.method == "uniform":
            soup = uniform_soup(states)
        else:
            res = greedy_soup(states, lambda s: held_out_accuracy(ctx, s))
            soup = res.state_dict
            info.update(kept=res.ingredients, individual_val=res.individual, soup_val=res.accuracy)
        st = PatchState.of(soup)
        tower, heads = st.model_tensors(), st.heads
        ctx.model.load_state_dict(tower, strict=False)
        out = as_result(FitResult(history=history, runtime=runtime), self.name, trainable, heads=heads, info=info)
        out.steps = sum(r["steps"] for r in records)
        return out


def tower_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_image_tower_key(k)}


def uniform_soup(states: list[StateDict]) -> dict[str, torch.Tensor]:
    """The mean of every floating-point tensor; other tensors from the first state."""
    if len(states) == 1:
        return {k: v.clone() for k, v in states[0].items()}
    return merge_state_dicts(states[0], states, method="linear")


def ingredient_config(cfg: Any, spec: SoupRecipe, overrides: Mapping[str, object]) -> Any:
    """The base recipe's settings for one ingredient (``cfg``'s type, validated like a config file)."""
    data = cfg.model_dump()
    data.update(overrides)
    data["recipe"] = spec.base.model_dump()
    return type(cfg).model_validate(data)


def held_out_accuracy(ctx: RecipeContext, state: StateDict) -> float:
    """Mean accuracy over the validation sets of ``state`` (tower plus any learned heads)."""
    st = PatchState.of(state)
    tower, heads = st.model_tensors(), st.heads
    ctx.model.load_state_dict(tower, strict=False)
    accs = []
    for s in ctx.val_sets:
        head = heads.get(s.name, s.head)
        accs.append(evaluate_split(ctx.model, head, s.images, np.asarray(s.labels), ctx.spec)["accuracy"])
    return float(np.mean(accs))
