"""ImageNet (ILSVRC-2012) validation (used as test) and optional training images.

Three layouts of the 50,000 validation images are read, all labelled in CLIP's class order
(class i = the i-th of the 1000 leaf wnids in sorted order, as the catalog's class list is):

- ``val/<wnid>/*.JPEG``: the usual "valprep" folders;
- flat ``val/ILSVRC2012_val_*.JPEG`` with Kaggle's ``LOC_val_solution.csv``;
- flat images as the official tar extracts them, with the official devkit
  (``ILSVRC2012_devkit_t12/data/meta.mat`` + ``ILSVRC2012_validation_ground_truth.txt``).
  The ground truth holds ILSVRC2012_IDs (1..1000) in ``meta.mat``'s order, which is NOT
  sorted-wnid order, so ids go through meta.mat's wnids before they become labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paint.data.readers.common import (
    DEFAULT_MAX_BAD,
    ReadResult,
    csv_records,
    file_split,
    first_existing,
    require_file,
)
from paint.data.readers.folders import read_class_folders
from paint.errors import PaintError

VAL_DIRS = ("val", "ILSVRC2012_img_val")
DEVKIT_DIRS = ("ILSVRC2012_devkit_t12", "devkit", ".")
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"


def devkit_wnids(meta_path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the leaf synsets (``num_children == 0``) in the devkit's ``meta.mat``."""
    import scipy.io

    try:
        synsets = np.atleast_1d(scipy.io.loadmat(meta_path, squeeze_me=True)["synsets"])
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
    except Exception as e:  # not a .mat, no synsets, or a struct without these fields
        raise PaintError(f"{meta_path}: not the ILSVRC2012 devkit meta.mat ({type(e).__name__}: {e})") from None
    return {int(i): str(w) for i, w, c in zip(ids, wnids, children) if int(c) == 0}


def devkit_labels(meta_path: Path, truth_path: Path, n_classes: int) -> tuple[list[int], list[str]]:
    """Labels in sorted-wnid (CLIP) order for each line of the ground truth, and the sorted wnids."""
    id_to_wnid = devkit_wnids(meta_path)
    wnids = sorted(id_to_wnid.values())
    if len(wnids) != n_classes:
        raise PaintError(f"{meta_path}: {len(wnids)} leaf synsets (num_children == 0), expected {n_classes}")
    index = {w: i for i, w in enumerate(wnids)}
    labels = []
    for line_no, line in enumerate(truth_path.read_text(encoding="utf-8").split(), start=1):
        if not line.isdigit() or int(line) not in id_to_wnid:
            raise PaintError(
                f"{truth_path} line {line_no}: {line!r} is not an ILSVRC2012_ID of a leaf synset in meta.mat"
            )
        labels.append(index[id_to_wnid[int(line)]])
    return labels, wnids


def _find_devkit(root: Path) -> Path | None:
    """The devkit folder holding ``data/meta.mat`` and the validation ground truth, if any."""
    for d in DEVKIT_DIRS:
        if (root / d / META).is_file() and (root / d / GROUND_TRUTH).is_file():
            return root / d
    return None


def _read_kaggle(root: Path, val: Path, n: int, max_bad: float, layout: str) -> tuple[Any, int, list[str]]:
    sol = require_file(root / "LOC_val_solution.csv", layout)
    firsts = _kaggle_wnids(sol)
    wnids = sorted(set(firsts.values()))
    if len(wnids) != n:
        raise PaintError(f"{sol}: {len(wnids)} distinct wnids, expected {n}")
    index = {w: i for i, w in enumerate(wnids)}
    ids = sorted(firsts)
    paths, labels = [str(val / f"{i}.JPEG") for i in ids], [index[firsts[i]] for i in ids]
    split, bad = file_split("imagenet/val", root, paths, labels, n, max_bad, f"imagenet/val listed in {sol}")
    return split, bad, wnids


def _kaggle_wnids(sol: Path) -> dict[str, str]:
    """ImageId -> the wnid of its first box in Kaggle's ``LOC_val_solution.csv`` (errors name the file and row)."""
    firsts = {}
    for i, r in enumerate(csv_records(sol, ("ImageId", "PredictionString"))):
        boxes = r["PredictionString"].split()
        if not r["ImageId"] or not boxes:
            raise PaintError(f"{sol} row {i + 1}: needs an ImageId and a PredictionString starting with a wnid")
        firsts[r["ImageId"]] = boxes[0]
    return firsts


def _read_devkit(root: Path, val: Path, devkit: Path, n: int, max_bad: float) -> tuple[Any, int, list[str]]:
    labels, wnids = devkit_labels(devkit / META, devkit / GROUND_TRUTH, n)
    # line i of the ground truth is ILSVRC2012_val_<i, 8 digits>.JPEG, counting from 1
    paths = [str(val / f"ILSVRC2012_val_{i:08d}.JPEG") for i in range(1, len(labels) + 1)]
    split, bad = file_split("imagenet/val", root, paths, labels, n, max_bad)
    return split, bad, wnids


def _wnid_folders(val: Path) -> Sequence[str]:
    return sorted(p.name for p in val.iterdir() if p.is_dir())


def read_imagenet(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """ImageNet validation as ``test`` (wnid folders, Kaggle CSV or official devkit) and optional ``train/<wnid>/``."""
    root = Path(root)
    layout = entry["layout"]
    n = len(entry["classnames"])
    val = first_existing(root / d for d in VAL_DIRS)
    if val is None or not val.is_dir():
        raise PaintError(f"directory {root / 'val'} not found; expected layout: {layout}")
    wnids = _wnid_folders(val)
    devkit = _find_devkit(root)
    if wnids:
        if len(wnids) != n:
            raise PaintError(f"{val}: found {len(wnids)} class folders, expected {n} wnid folders")
        test, _, n_bad = read_class_folders(val, wnids, "imagenet/val", max_bad, layout)
        how = "wnid folders"
    elif devkit is not None:
        test, n_bad, wnids = _read_devkit(root, val, devkit, n, max_bad)
        how = "official devkit ground truth"
    else:
        test, n_bad, wnids = _read_kaggle(root, val, n, max_bad, layout)
        how = "LOC_val_solution.csv"
    splits = {"test": test}
    if (root / "train").is_dir():
        splits["train"], _, bad = read_class_folders(root / "train", wnids, "imagenet/train", max_bad, layout)
        n_bad += bad
    return ReadResult(splits, info={"val_labels": how, "bad_images": n_bad})
