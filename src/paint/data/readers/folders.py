"""A user's data: class folders (``<root>/<class>/*``, optionally under train/val/test) or a CSV list."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paint.data.readers.common import (
    DEFAULT_MAX_BAD,
    FileSplit,
    ReadResult,
    file_split,
    list_images,
    require_dir,
    require_file,
)
from paint.errors import PaintError


def read_class_folders(
    root: Path,
    class_folders: Sequence[str] | None,
    kind: str,
    max_bad: float = DEFAULT_MAX_BAD,
    layout: str = "<root>/<class>/*.jpg",
) -> tuple[FileSplit, tuple[str, ...], int]:
    """One sub-folder per class. With ``class_folders``, folder i is class i and any other
    folder is an error; without, the sorted folder names are the classes."""
    require_dir(root, layout)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise PaintError(f"{root} has no class sub-folders; expected layout: {layout}")
    names = tuple(class_folders) if class_folders is not None else tuple(found)
    index = {n: i for i, n in enumerate(names)}
    unknown = [f for f in found if f not in index]
    if unknown:
        raise PaintError(
            f"{root}: folder {unknown[0]!r} is not one of the {len(names)} classes; the class list does not fit the data"
        )
    paths, labels = [], []
    for name in found:
        files = list_images(root / name)
        paths += files
        labels += [index[name]] * len(files)
    split, n_bad = file_split(kind, root, paths, labels, len(names), max_bad)
    return split, names, n_bad


def read_image_folder(
    root: str | Path, classnames: Sequence[str] | None = None, max_bad: float = DEFAULT_MAX_BAD
) -> ReadResult:
    """A user's folder: ``<root>/<class>/*`` or ``<root>/{train,val,test}/<class>/*``.

    With ``classnames``, class folders must be named by them (spaces may be written as ``_``)."""
    root = Path(root)
    layout = "<root>/<class>/<image> or <root>/train/<class>/<image> (+ optional val/, test/)"
    require_dir(root, layout)
    folders = None
    if classnames is not None:
        folders = list(classnames)
    subsets = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    splits, n_bad, names = {}, 0, None
    if subsets:
        if "train" not in subsets and "test" not in subsets:
            raise PaintError(f"{root}: found {subsets} but no train/ or test/; expected layout: {layout}")
        if folders is None:  # the union of class folders over subsets, sorted
            folders = sorted({p.name for s in subsets for p in (root / s).iterdir() if p.is_dir()})
        folders = _match_folders(root / subsets[0], folders)
        for s in subsets:
            split, names, bad = read_class_folders(
                root / s, _match_folders(root / s, folders), f"folder/{s}", max_bad, layout
            )
            splits[s], n_bad = split, n_bad + bad
    else:
        if folders is not None:
            folders = _match_folders(root, folders)
        split, names, n_bad = read_class_folders(root, folders, "folder", max_bad, layout)
        splits["all"] = split
    display = tuple(classnames) if classnames is not None else tuple(n.replace("_", " ") for n in names)
    return ReadResult(splits, display, {"bad_images": n_bad})


def _match_folders(root: Path, names: Sequence[str]) -> list[str]:
    """Folder names for class names: exact, or with spaces as underscores when that exists on disk."""
    out = []
    for n in names:
        alt = n.replace(" ", "_")
        out.append(alt if not (root / n).is_dir() and (root / alt).is_dir() else n)
    return out


def read_csv_list(
    path: str | Path, classnames: Sequence[str] | None = None, max_bad: float = DEFAULT_MAX_BAD
) -> ReadResult:
    """A CSV of ``path,label`` rows (optional header; optional third column ``split``).

    Paths are relative to the CSV's folder. A label is a class name or an integer index;
    without ``classnames`` the sorted distinct string labels become the classes.
    """
    path = Path(path)
    require_file(path, "a CSV file with rows path,label[,split]")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise PaintError(f"{path}: no rows; expected path,label[,split]")
    if any(len(r) < 2 for r in rows):
        raise PaintError(f"{path}: every row needs path,label")
    raw = [r[1].strip() for r in rows]
    if classnames is None:
        if all(x.lstrip("-").isdigit() for x in raw):
            raise PaintError(f"{path}: labels are integers, so give the class names (classnames in the task config)")
        classnames = sorted(set(raw))
    index = {n: i for i, n in enumerate(classnames)}
    labels = []
    for i, x in enumerate(raw):
        if x in index:
            labels.append(index[x])
        elif x.lstrip("-").isdigit():
            labels.append(int(x))
        else:
            raise PaintError(f"{path} row {i + 1}: label {x!r} is not one of the {len(classnames)} class names")
    labels = np.asarray(labels)
    base = path.parent
    files = [str((base / r[0].strip()) if not os.path.isabs(r[0].strip()) else Path(r[0].strip())) for r in rows]
    groups = [r[2].strip().lower() if len(r) > 2 and r[2].strip() else "all" for r in rows]
    groups = ["val" if g in ("valid", "validation") else g for g in groups]
    splits, n_bad = {}, 0
    for g in sorted(set(groups)):
        if g not in ("train", "val", "test", "all"):
            raise PaintError(f"{path}: split {g!r} must be train, val or test")
        idx = [i for i, gg in enumerate(groups) if gg == g]
        split, bad = file_split(f"csv/{g}", base, [files[i] for i in idx], labels[idx], len(classnames), max_bad)
        splits[g], n_bad = split, n_bad + bad
    return ReadResult(splits, tuple(classnames), {"bad_images": n_bad})
