"""A user's data: class folders (``<root>/<class>/*``, optionally under train/val/test) or a CSV list."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from paint.data.readers.common import (
    DEFAULT_MAX_BAD,
    FileSplit,
    ReadResult,
    file_split,
    is_int,
    list_images,
    read_csv_rows,
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


CSV_LAYOUT = "a CSV file with rows path,label[,split]"
CSV_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read_csv_list(
    path: str | Path, classnames: Sequence[str] | None = None, max_bad: float = DEFAULT_MAX_BAD
) -> ReadResult:
    """A CSV of ``path,label`` rows (optional header; optional third column ``split``).

    Paths are relative to the CSV's folder. A label is a class name or an integer index;
    without ``classnames`` the sorted distinct string labels become the classes. Every error,
    about a row or about the images the rows list, names the CSV file.
    """
    path = Path(path)
    require_file(path, CSV_LAYOUT)
    rows = _csv_list_rows(path)
    raw = [r[1].strip() for r in rows]
    if classnames is None:
        if all(is_int(x) for x in raw):
            raise PaintError(f"{path}: labels are integers, so give the class names (classnames in the task config)")
        classnames = sorted(set(raw))
    index = {n: i for i, n in enumerate(classnames)}
    labels = np.asarray([_csv_label(x, index, path, i + 1) for i, x in enumerate(raw)], dtype=np.int64)
    base = path.parent
    files = [str((base / r[0].strip()) if not os.path.isabs(r[0].strip()) else Path(r[0].strip())) for r in rows]
    groups = _csv_groups(rows, path)
    splits, n_bad = {}, 0
    for g in sorted(set(groups)):
        idx = [i for i, gg in enumerate(groups) if gg == g]
        split, bad = file_split(
            f"csv/{g}", base, [files[i] for i in idx], labels[idx], len(classnames), max_bad, f"{path} ({g} rows)"
        )
        splits[g], n_bad = split, n_bad + bad
    return ReadResult(splits, tuple(classnames), {"bad_images": n_bad})


def _csv_list_rows(path: Path) -> list[list[str]]:
    """The non-blank data rows of a ``path,label[,split]`` CSV (a header row dropped), each with both cells."""
    rows = [r for r in read_csv_rows(path) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise PaintError(f"{path}: no rows; expected path,label[,split]")
    short = next((i for i, r in enumerate(rows) if len(r) < 2), None)
    if short is not None:
        raise PaintError(f"{path} row {short + 1}: every row needs path,label")
    return rows


def _csv_label(text: str, index: Mapping[str, int], path: Path, row: int) -> int:
    """A label cell as a class index: a class name, else an integer index (range checked by ``file_split``)."""
    if text in index:
        return index[text]
    if is_int(text):
        return int(text)
    raise PaintError(f"{path} row {row}: label {text!r} is not one of the {len(index)} class names")


def _csv_groups(rows: Sequence[Sequence[str]], path: Path) -> list[str]:
    """Each row's split (train, val or test), or ``all`` for every row when the CSV gives none."""
    cells = [r[2].strip().lower() if len(r) > 2 else "" for r in rows]
    if not any(cells):
        return ["all"] * len(rows)
    for i, g in enumerate(cells):
        if not g:
            raise PaintError(f"{path} row {i + 1}: no split, but other rows give one; give every row a split or none")
        if g not in CSV_SPLITS:
            raise PaintError(f"{path} row {i + 1}: split {g!r} must be train, val or test")
    return [CSV_SPLITS[g] for g in cells]
