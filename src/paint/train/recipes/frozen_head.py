"""PAINT's recipe, the default: the image tower trains against each task's frozen zero-shot head.

Only the image tower (``vision_model.*``, ``visual_projection.*``) trains; the text tower, its
projection and the logit scale stay bit-identical, and no parameter is added, so the fine-tuned
tower stays compatible with the text side and can be interpolated with the zero-shot one. Every
hook is :class:`paint.train.recipes.base.Recipe`'s default.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from paint.train.recipes.base import Recipe
from paint.train.recipes.registry import register


@register
class FrozenHeadRecipe(Recipe):
    """PAINT's recipe: the image tower trains against the frozen zero-shot heads."""

    name: Literal["frozen-head"] = "frozen-head"
    paper: ClassVar[str] = (
        "Ilharco et al. 2022, Patching open-vocabulary models by interpolating weights (arXiv:2208.05592)"
    )
