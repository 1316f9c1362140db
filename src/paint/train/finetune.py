"""Fine-tune the image tower with a recipe; PAINT's (the zero-shot heads frozen) is the default.

With the default ``frozen-head`` recipe only ``vision_model.*`` and ``visual_projection.*``
train; the text tower, the text projection and the logit scale stay bit-identical, and no
parameter is added: the classifier is the frozen zero-shot head, so the fine-tuned tower stays
compatible with the text side and can be interpolated with the zero-shot one. Several tasks at
once (joint patching) are scored each against its own head.

Other recipes (``finetune.recipe``, any registered in :mod:`paint.train.recipes`) change how the
tower is trained, not what comes out: new weights in the model (and what else the recipe's
:meth:`~paint.train.recipes.base.Recipe.coverage` names), so the interpolation, selection and
reports downstream are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from paint.data.preprocess import ImageSpec
from paint.evaluation.results import evaluate_split
from paint.train.data import TrainingSet
from paint.train.recipes.base import RecipeContext, RecipeResult
from paint.train.recipes.config import FinetuneConfig

# The entry point and the types its callers need, in one import.
__all__ = ["FinetuneConfig", "RecipeResult", "TrainingSet", "finetune"]


def finetune(
    model: torch.nn.Module,
    sets: list[TrainingSet],
    spec: ImageSpec,
    cfg: FinetuneConfig,
    out_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    on_epoch_end: Callable[[int, torch.nn.Module], dict[str, float]] | None = None,
    val_sets: Sequence[TrainingSet] = (),
    tokenizer: object = None,
) -> RecipeResult:
    """Fine-tune ``model``'s image tower in place on ``sets`` (one task, or several jointly) with ``cfg.recipe``.

    Args:
        model: a transformers CLIPModel; it ends holding theta_ft in its image tower.
        sets: training data and frozen head per task.
        spec: the checkpoint's preprocessing (mean/std for on-the-fly normalisation).
        cfg: optimisation settings and the recipe.
        out_dir: where the epoch-end checkpoint goes (``out_dir/checkpoint``; a soup's
            ingredients under ``out_dir/ingredient-<i>/``).
        resume: continue from that checkpoint.
        fingerprint: identity of the run's inputs (a checkpoint of another run is refused).
        on_epoch_end: optional validation callback.
        val_sets: held-out data of the same tasks (a greedy soup ranks its ingredients on it).
        tokenizer: the model's tokenizer (flyp captions the images with the class prompts).

    Returns:
        the loop's record plus the recipe's: learned heads (lp-ft), trainable parameters, info.

    Example:
        >>> from paint import finetune
        >>> from paint.train.finetune import TrainingSet
        >>> sets = [TrainingSet("digits", images_uint8, labels, head)]  # doctest: +SKIP
        >>> record = finetune(bundle.model, sets, bundle.spec, cfg, "runs/ft")  # doctest: +SKIP
    """
    if on_epoch_end is None and cfg.log_with is not None and val_sets:
        on_epoch_end = validation_accuracy(val_sets, spec)  # what the tracker shows per epoch
    ctx = RecipeContext(
        model, list(sets), spec, cfg, out_dir, resume, fingerprint, on_epoch_end, tuple(val_sets), tokenizer
    )
    return cfg.recipe.run(ctx)


def validation_accuracy(
    val_sets: Sequence[TrainingSet], spec: ImageSpec
) -> Callable[[int, torch.nn.Module], dict[str, float]]:
    """An epoch-end callback: each task's validation accuracy against its head (``val_accuracy/<task>``)."""

    def measure(epoch: int, model: torch.nn.Module) -> dict[str, float]:
        return {
            f"val_accuracy/{s.name}": evaluate_split(model, s.head, s.images, np.asarray(s.labels), spec)["accuracy"]
            for s in val_sets
        }

    return measure
