"""The one name -> recipe table; each entry carries the paper it implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from paint.errors import PaintError
from paint.train.recipes import config as c
from paint.train.recipes.base import RecipeContext, RecipeResult


@dataclass(frozen=True)
class Recipe:
    name: str
    paper: str
    run: Callable[[RecipeContext], RecipeResult]
    learns_heads: bool = False  # the patching tasks are scored with learned heads (lp-ft; a soup of it)
    text_tower: bool = False  # trains the text tower too (flyp): lines cover both towers, heads are rebuilt


def _frozen(ctx: RecipeContext) -> RecipeResult:
    from paint.train.recipes.tower import run_frozen_head

    return run_frozen_head(ctx)


def _l2sp(ctx: RecipeContext) -> RecipeResult:
    from paint.train.recipes.tower import run_l2sp

    return run_l2sp(ctx)


def _lpft(ctx: RecipeContext) -> RecipeResult:
    from paint.train.recipes.lpft import run_lpft

    return run_lpft(ctx)


def _lora(ctx: RecipeContext) -> RecipeResult:
    from paint.train.recipes.lora import run_lora

    return run_lora(ctx)


def _flyp(ctx: RecipeContext) -> RecipeResult:
    from paint.train.recipes.flyp import run_flyp

    return run_flyp(ctx)


def _soup(ctx: RecipeContext) -> RecipeResult:
    from paint.train.recipes.soup import run_soup

    return run_soup(ctx, run_recipe)


RECIPES: dict[str, Recipe] = {
    "frozen-head": Recipe("frozen-head", c.PAINT, _frozen),
    "lp-ft": Recipe("lp-ft", c.LPFT, _lpft, learns_heads=True),
    "flyp": Recipe("flyp", c.FLYP, _flyp, text_tower=True),
    "l2-sp": Recipe("l2-sp", c.L2SP, _l2sp),
    "lora": Recipe("lora", c.LORA, _lora),
    "soup": Recipe("soup", c.SOUPS, _soup),
}


def recipe_for(name: str) -> Recipe:
    if name not in RECIPES:
        raise PaintError(f"unknown fine-tuning recipe {name!r}; choose from: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_flags(cfg: c.FinetuneConfig) -> Recipe:
    """The recipe of ``cfg`` (for a soup: with its base's flags, since the soup inherits them)."""
    r = recipe_for(cfg.recipe.name)
    if isinstance(cfg.recipe, c.SoupRecipe):
        base = recipe_for(cfg.recipe.base.name)
        return Recipe(r.name, r.paper, r.run, base.learns_heads, base.text_tower)
    return r


def run_recipe(ctx: RecipeContext) -> RecipeResult:
    """Fine-tune ``ctx.model`` in place with ``ctx.cfg.recipe``; the model ends holding theta_ft."""
    return recipe_for(ctx.cfg.recipe.name).run(ctx)


def check_recipe_fits_model(cfg: c.FinetuneConfig, model: object) -> None:
    """What can be checked of a recipe against the loaded model before any work (LoRA's target layers).

    Raises :class:`PaintError` in one line; called after the model loads and before the run
    directory, the preprocessing or the fine-tuning start.
    """
    spec = cfg.recipe.base if isinstance(cfg.recipe, c.SoupRecipe) else cfg.recipe
    if isinstance(spec, c.LoraRecipe):
        from paint.train.recipes.lora import lora_targets

        lora_targets(model, spec.target_modules)  # type: ignore[arg-type]
