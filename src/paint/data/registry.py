"""Turn a :class:`TaskSpec` into a :class:`Task`: built-ins here, other sources in ``sources``."""

from __future__ import annotations

from dataclasses import replace

from paint.data.spec import TaskSpec
from paint.data.task import Task
from paint.errors import PaintError


def load_task(spec: TaskSpec) -> tuple[Task, dict]:
    """The task and its split definition (seeds, sizes, index hashes) for the results."""
    if spec.source == "builtin":
        task, info = _builtin(spec)
    else:
        from paint.data.sources import load_external_task

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
    return task, info


def _builtin(spec: TaskSpec) -> tuple[Task, dict]:
    from paint.data.builtin import builtin_task_names, digits_task

    if spec.name == "digits":
        return digits_task(spec.val_fraction, spec.val_max, spec.split_seed)
    names = builtin_task_names()
    if spec.name not in names:
        raise PaintError(f"unknown built-in task {spec.name!r}; built-ins are: {', '.join(names)} (or give source: folder/csv/hf/catalog)")
    from paint.world.tasks import world_task

    task = world_task(spec.name, seed=spec.seed)
    return task, {"generator_seed": spec.seed, "sizes": {k: len(v) for k, v in task.splits.items()}}
