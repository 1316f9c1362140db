"""paint: patch open-vocabulary image models in weight space.

The public API, for researchers who script paint rather than run its commands (each name is
documented with an example in its docstring; ``docs/api.md`` lists them)::

    import paint

    bundle = paint.load_clip("paint:default")                      # a CLIP checkpoint + tokenizer + processor
    task, _ = paint.load_task(paint.TaskSpec(name="digits"))       # class names, templates, splits
    head = paint.zeroshot_head(bundle, task.classnames, task.templates)
    summary = paint.run_patch(paint.PatchConfig(output_dir="runs/p", patch_tasks=["digits"], support_tasks=["shapes"]))

Names resolve lazily (PEP 562), so ``import paint`` stays cheap: torch and transformers load
when a name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; the one list of the API (docs/api.md follows it).
_API: dict[str, str] = {
    # models: load, save, features, zero-shot heads
    "load_clip": "paint.models.clip",
    "load_model": "paint.models.clip",
    "ModelBundle": "paint.models.clip",
    "family_of": "paint.models.families",
    "FAMILIES": "paint.models.families",
    "save_clip": "paint.models.clip",
    "ClipBundle": "paint.models.clip",
    "image_features": "paint.models.families",
    "zeroshot_head": "paint.models.heads",
    "build_head": "paint.models.heads",
    # data: task specs and tasks
    "TaskSpec": "paint.data.spec",
    "load_task": "paint.data.registry",
    # evaluation
    "predict": "paint.evaluation.results",
    "metrics_from_logits": "paint.evaluation.results",
    "classification_report": "paint.evaluation.classification",
    "preprocess_split": "paint.data.preprocess",
    "ImageSpec": "paint.data.preprocess",
    "normalize": "paint.data.preprocess",
    "evaluate_split": "paint.evaluation.results",
    "ResultsStore": "paint.evaluation.results",
    # weight-space maths and merging
    "interpolate": "paint.weights.ops",
    "task_vector": "paint.weights.ops",
    "add_task_vectors": "paint.weights.ops",
    "MergeConfig": "paint.pipeline.merge_config",
    "run_merge": "paint.pipeline.merge",
    # choosing coefficients
    "SelectionConfig": "paint.selection.config",
    "select_alpha": "paint.selection.rules",
    "run_search": "paint.selection.strategies",
    "evaluator_for": "paint.selection.strategies",
    "function_evaluator": "paint.selection.evaluator",
    # fine-tuning
    "FinetuneConfig": "paint.train.recipes.config",
    "Recipe": "paint.train.recipes.base",
    "Coverage": "paint.train.recipes.base",
    "finetune": "paint.train.finetune",
    # the pipeline: task pool, the patch operation, the runs
    "TaskPool": "paint.pipeline.pool",
    "Line": "paint.pipeline.pool",
    "PatchState": "paint.types",
    "choose": "paint.pipeline.operation",
    "PatchConfig": "paint.pipeline.patch",
    "run_patch": "paint.pipeline.patch",
    "MultitaskConfig": "paint.pipeline.multitask",
    "CombineConfig": "paint.pipeline.combine",
    "run_multitask": "paint.pipeline.multitask",
    # studies and their statistics
    "ScaleConfig": "paint.studies.scale",
    "run_scale": "paint.studies.scale",
    "load_finetuned": "paint.pipeline.patch",
    "complete_state": "paint.weights.ops",
    "seed_interval": "paint.stats",
    "wilson_interval": "paint.stats",
    "image_interval": "paint.stats",
    "paired_difference": "paint.stats",
    "paired_drop_lower": "paint.stats",
    "Difference": "paint.stats",
    # shared types
    "PaintError": "paint.errors",
    "StateDict": "paint.types",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'paint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
