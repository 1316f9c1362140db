"""Turn a :class:`TaskSpec` into a :class:`Task`: built-ins here, other sources in ``sources``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from paint.data.builtin import builtin_task_names, digits_task
from paint.data.sources import load_external_task
from paint.data.spec import TaskSpec
from paint.data.task import Task
from paint.errors import PaintError
from paint.world.tasks import world_task

log = logging.getLogger("paint.data")

# Below this many validation images one image moves accuracy by more than 2 points, which
# is more than the support tolerance alpha is chosen against (about one point).
MIN_VAL_IMAGES = 50


def small_split_warnings(task: Task, spec: TaskSpec, info: Mapping[str, Any]) -> list[str]:
    """Warnings for splits too small to choose a mixing coefficient on, each saying what to do.

    Args:
        task: the loaded task.
        spec: its config entry (for the current ``val_fraction``).
        info: the split definition :func:`load_task` returns (is the validation split official or derived?).
    """
    if "val" not in task.splits or len(task.splits["val"]) >= MIN_VAL_IMAGES:
        return []
    n_val = len(task.splits["val"])
    head = (
        f"task {spec.name!r}: the validation split has only {n_val} image{'s' * (n_val != 1)} "
        f"(at least {MIN_VAL_IMAGES} advised), so alpha is chosen on noise"
    )
    if info.get("val", {}).get("official"):
        return [f"{head}; add validation images to the data"]
    pool = n_val + len(task.splits.get("train", ()))
    needed = math.ceil(100 * MIN_VAL_IMAGES / max(1, pool)) / 100
    if needed < 0.5:
        return [f"{head}; raise val_fraction (now {spec.val_fraction}) to {needed} or add data"]
    return [f"{head}; add data (train and validation hold {pool} images in all)"]


def check_classes(task: Task) -> None:
    """Refuse a task with fewer than two classes: zero-shot top-1 among one class is a trivial 100%."""
    if len(task.classnames) < 2:
        raise PaintError(
            f"task {task.name!r} has only one class ({task.classnames[0]!r}); zero-shot classification needs "
            "at least two (with one, every image is right by construction), so give more classes or class names"
        )


def load_task(spec: TaskSpec, *, warn_small_val: bool = True) -> tuple[Task, dict]:
    """The task and its split definition (seeds, sizes, index hashes) for the results.

    A task needs at least two classes (:func:`check_classes`). ``warn_small_val`` logs
    :func:`small_split_warnings`; commands that choose no alpha on the task (``paint eval``,
    ``paint tasks``) pass False.

    Example:
        >>> from paint import TaskSpec, load_task
        >>> task, info = load_task(TaskSpec(name="digits"))  # scikit-learn's real handwritten digits
        >>> task.classnames[:3], len(task.split("test"))
        (('zero', 'one', 'two'), 600)
    """
    if spec.source == "builtin":
        task, info = _builtin(spec)
    else:
        try:
            task, info = load_external_task(spec)
        except PaintError as e:
            if repr(spec.name) in str(e):
                raise
            raise PaintError(f"task {spec.name!r}: {e}") from None
    if spec.templates:
        task = replace(task, templates=tuple(spec.templates))
    if spec.classnames and spec.source == "builtin":
        if len(spec.classnames) != len(task.classnames):
            raise PaintError(
                f"task {spec.name!r}: {len(spec.classnames)} class names given but the data has {len(task.classnames)} classes"
            )
        task = replace(task, classnames=tuple(spec.classnames))
    if spec.name != task.name:
        task = replace(task, name=spec.name)
    check_classes(task)
    for warning in small_split_warnings(task, spec, info) if warn_small_val else ():
        log.warning(warning)
    return task, info


def _builtin(spec: TaskSpec) -> tuple[Task, dict]:

    if spec.name == "digits":
        return digits_task(spec.val_fraction, spec.val_max, spec.split_seed)
    names = builtin_task_names()
    if spec.name not in names:
        raise PaintError(
            f"unknown built-in task {spec.name!r}; built-ins are: {', '.join(names)} (or give source: folder/csv/hf/catalog)"
        )

    task = world_task(spec.name, seed=spec.seed)
    return task, {"generator_seed": spec.seed, "sizes": {k: len(v) for k, v in task.splits.items()}}
