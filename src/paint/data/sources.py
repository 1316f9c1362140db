"""Tasks from outside paint: catalog benchmarks, a user's folder or CSV, Hugging Face datasets.

:func:`load_external_task` turns a :class:`TaskSpec` whose ``source`` is not ``builtin``
into a :class:`Task` with ``train``, ``val`` and ``test`` splits, plus a split definition
for the results. Validation is held out from train as the PAINT code does (10%, at most
5,000 images, seed ``split_seed``) unless the data ships an official validation split;
it never comes from test. Data without any split gets a test set held out first with a
fixed seed (0), so every run is tested on the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paint.data.catalog import catalog_entry
from paint.data.readers import (
    ReadResult,
    read_catalog_layout,
    read_csv_list,
    read_hf,
    read_image_folder,
)
from paint.data.spec import TaskSpec
from paint.data.task import ImageSplit, Task, holdout_split
from paint.errors import PaintError

DEFAULT_TEMPLATES = ("a photo of a {}.",)
TEST_SEED = 0  # the derived test split does not move with split_seed


@dataclass(frozen=True)
class SourceRead:
    """What one source gives a task: the read data, names, templates and where they came from."""

    read: ReadResult
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    test_fraction: float
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _read_catalog(spec: TaskSpec) -> SourceRead:

    entry = catalog_entry(spec.name)
    read = read_catalog_layout(spec.path, entry.as_mapping(), spec.max_bad_fraction)
    test_fraction = spec.test_fraction
    if "test_fraction" not in spec.model_fields_set and entry.test_fraction:
        test_fraction = entry.test_fraction
    return SourceRead(
        read,
        _classnames(spec, entry.classnames),
        tuple(spec.templates or entry.templates),
        test_fraction,
        f"{entry.title} (catalog: {entry.role} task)",
        {"catalog": entry.name, "role": entry.role, "prompt_sources": entry.sources},
    )


def _read_user(read: ReadResult, spec: TaskSpec) -> SourceRead:
    classnames, templates = _user_names(spec, read)
    return SourceRead(read, classnames, templates, spec.test_fraction)


# source name -> reader; TaskSpec's Literal keeps ``source`` within these keys (and "builtin")
SOURCES: dict[str, Callable[[TaskSpec], SourceRead]] = {
    "catalog": _read_catalog,
    "folder": lambda spec: _read_user(read_image_folder(spec.path, spec.classnames, spec.max_bad_fraction), spec),
    "csv": lambda spec: _read_user(read_csv_list(spec.path, spec.classnames, spec.max_bad_fraction), spec),
    "hf": lambda spec: _read_user(read_hf(spec.path, spec.image_column, spec.label_column, spec.classnames), spec),
}


def load_external_task(spec: TaskSpec) -> tuple[Task, dict[str, Any]]:
    """The task a non-builtin spec names, and its split definition (seeds, sizes, index hashes)."""
    if spec.source == "builtin":
        raise PaintError(f"task {spec.name!r} is a built-in; load it with paint.data.registry.load_task")
    if not spec.path:
        raise PaintError(f"task {spec.name!r}: source {spec.source!r} needs a path")
    if spec.source not in SOURCES:  # pragma: no cover - TaskSpec's Literal forbids it
        raise PaintError(f"task {spec.name!r}: unknown source {spec.source!r}")
    got = SOURCES[spec.source](spec)
    splits, info = assemble_splits(got.read, spec, got.test_fraction)
    info = {
        "source": spec.source,
        "path": str(spec.path),
        "n_classes": len(got.classnames),
        **got.extra,
        **info,
        **got.read.info,
    }
    task = Task(spec.name, got.classnames, got.templates, splits, got.description)
    for name in splits:
        task.split(name)  # label range and emptiness checked now, not mid-sweep
    return task, info


def _classnames(spec: TaskSpec, catalog_names: tuple[str, ...]) -> tuple[str, ...]:
    if spec.classnames is None:
        return catalog_names
    if len(spec.classnames) != len(catalog_names):
        raise PaintError(
            f"task {spec.name!r}: {len(spec.classnames)} class names given but the catalog task has {len(catalog_names)}"
        )
    return tuple(spec.classnames)


def _user_names(spec: TaskSpec, read: ReadResult) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = tuple(spec.classnames) if spec.classnames else read.classnames
    if not names:
        raise PaintError(f"task {spec.name!r}: the data carries no class names; give classnames in the task config")
    return names, tuple(spec.templates or DEFAULT_TEMPLATES)


def assemble_splits(read: ReadResult, spec: TaskSpec, test_fraction: float) -> tuple[dict[str, ImageSplit], dict]:
    """train/val/test from what a reader found; the definition of every derived split.

    - ``all`` only (no split on disk): test held out with seed 0 (``test_fraction``), then val.
    - train without val: val held out from train (``val_fraction``, ``val_max``, ``split_seed``).
    - test only (e.g. ImageNet val without train): just ``test``.
    """
    found = dict(read.splits)
    info: dict[str, Any] = {}
    if "all" in found:
        rest, test, tdef = holdout_split(found.pop("all"), test_fraction, 10**9, TEST_SEED, "test", "trainval")
        found["train"], found["test"] = rest, test
        info["test"] = {"derived": True, **tdef, "fraction": test_fraction}
    elif "test" in found:
        info["test"] = {"derived": False, "official": True}
    if "train" in found and "val" not in found:
        train, val, vdef = holdout_split(found["train"], spec.val_fraction, spec.val_max, spec.split_seed)
        found["train"], found["val"] = train, val
        info["val"] = {"derived": True, **vdef}
    elif "val" in found:
        info["val"] = {"derived": False, "official": True}
    if "train" not in found:
        info["note"] = "no training images on disk: only the test split is available"
    order = [s for s in ("train", "val", "test") if s in found]
    info["sizes"] = {s: len(found[s]) for s in order}
    info["identities"] = {s: found[s].identity for s in order}
    return {s: found[s] for s in order}, info
