"""The paper's task catalog: class names, prompt templates, layout and reader per task.

The data lives in ``paint/catalog/<name>.json`` (one file per task, each naming where its
class names and templates come from: CLIP's published evaluation, or the PAINT code where
CLIP has none). This module only reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from paint.data.readers.registry import probe_groups
from paint.errors import PaintError

ROLES = ("patch", "support", "transfer")


@dataclass(frozen=True)
class CatalogEntry:
    """One benchmark task as CLIP evaluates it and as its official download lays it out."""

    name: str
    title: str
    role: str  # patch / support / transfer (its part in the PAINT paper)
    role_note: str
    reader: str
    layout: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    sources: dict[str, str] = field(default_factory=dict)
    official_splits: dict[str, Any] = field(default_factory=dict)
    flip: bool = True  # whether horizontal flips are a sensible augmentation
    folders: tuple[str, ...] | None = None  # on-disk class folder names aligned with classnames
    test_fraction: float | None = None  # held-out test fraction when the data has no split

    def as_mapping(self) -> dict[str, Any]:
        """The fields readers use, as a plain dict."""
        return {
            "name": self.name,
            "reader": self.reader,
            "layout": self.layout,
            "classnames": list(self.classnames),
            "folders": list(self.folders) if self.folders else None,
        }


def _entry_from_json(d: dict[str, Any]) -> CatalogEntry:
    role = d["role"]
    if role not in ROLES:
        raise ValueError(f"catalog entry {d.get('name')!r}: role {role!r} not in {ROLES}")
    return CatalogEntry(
        name=d["name"],
        title=d["title"],
        role=role,
        role_note=d.get("role_note", ""),
        reader=d["reader"],
        layout=d["layout"],
        classnames=tuple(d["classnames"]),
        templates=tuple(d["templates"]),
        sources=dict(d.get("sources", {})),
        official_splits=dict(d.get("official_splits", {})),
        flip=bool(d.get("augment", {}).get("flip", True)),
        folders=tuple(d["folders"]) if d.get("folders") else None,
        test_fraction=d.get("test_fraction_if_unsplit"),
    )


@lru_cache(maxsize=1)
def _entries() -> tuple[CatalogEntry, ...]:
    """Every catalog entry, read once from the package data (immutable, so caching is safe)."""
    folder = resources.files("paint") / "catalog"
    out = []
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            out.append(_entry_from_json(json.loads(item.read_text(encoding="utf-8"))))
    return tuple(out)


def list_catalog() -> tuple[CatalogEntry, ...]:
    """All entries, patching tasks first, then supported, then transfer tasks; by name within."""
    return tuple(sorted(_entries(), key=lambda e: (ROLES.index(e.role), e.name)))


def _canon(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


ALIASES = {
    "stanford_cars": "cars",
    "fashionmnist": "fashion_mnist",
    "kitti_distance": "kitti",
    "food_101": "food101",
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "stl_10": "stl10",
    "imagenet1k": "imagenet",
}


def catalog_entry(name: str) -> CatalogEntry:
    """The entry called ``name`` (case-insensitive; a few common aliases accepted)."""
    key = _canon(name)
    key = ALIASES.get(key, key)
    for e in _entries():
        if e.name == key:
            return e
    raise PaintError(f"{name!r} is not in the catalog; known tasks: {', '.join(e.name for e in list_catalog())}")


def locate(entry: CatalogEntry, root: str | Path) -> Path | None:
    """The directory holding ``entry``'s data: ``root/<name>`` or ``root`` itself; None if absent."""

    groups = probe_groups(entry.as_mapping())
    for cand in (Path(root) / entry.name, Path(root)):
        if cand.is_dir() and groups and all(any((cand / p).exists() for p in g) for g in groups):
            return cand
    return None


def default_data_root() -> Path:
    """``$PAINT_DATA`` if set, else ``~/data`` (where the PAINT code keeps its datasets)."""
    return Path(os.environ.get("PAINT_DATA", "~/data")).expanduser()


def describe(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """Everything about one task: classes, templates, layout, sources, and whether it is on disk.

    Args:
        name: catalog name.
        root: a data root (``root/<name>`` is checked, then ``root``); default :func:`default_data_root`.
    """
    e = catalog_entry(name)
    root = Path(root) if root is not None else default_data_root()
    found = locate(e, root)
    return {
        "name": e.name,
        "title": e.title,
        "role": e.role,
        "role_note": e.role_note,
        "n_classes": len(e.classnames),
        "classnames": list(e.classnames),
        "templates": list(e.templates),
        "reader": e.reader,
        "layout": e.layout,
        "official_splits": e.official_splits,
        "sources": e.sources,
        "augment_flip": e.flip,
        "root_checked": str(root),
        "present": found is not None,
        "path": str(found) if found else None,
    }
