"""Official layouts of the catalog's file-based benchmarks: EuroSAT, RESISC45, DTD, GTSRB, SUN397, Cars, Food-101.

Each reader takes the catalog entry (as a mapping: name, layout, classnames, folders) so
class order always follows the catalog, and says which layout it expected when files are missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paint.data.readers.common import (
    DEFAULT_MAX_BAD,
    ReadResult,
    csv_int,
    csv_records,
    file_split,
    first_existing,
    list_images,
    read_list_file,
    require_dir,
    require_file,
    subset_files,
)
from paint.data.readers.folders import read_class_folders
from paint.errors import PaintError


def read_eurosat(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """EuroSAT: PAINT's ``train/ val/ test/`` class folders, or the official flat class folders."""
    root = Path(root)
    folders = entry["folders"]
    layout = entry["layout"]
    require_dir(root, layout)
    if (root / "train").is_dir():
        splits, n_bad = {}, 0
        for s in ("train", "val", "test"):
            if (root / s).is_dir():
                splits[s], _, bad = read_class_folders(root / s, folders, f"eurosat/{s}", max_bad, layout)
                n_bad += bad
        return ReadResult(splits, info={"layout": "train/test folders", "bad_images": n_bad})
    base = first_existing([root / "2750", root / "EuroSAT_RGB", root / "EuroSAT"]) or root
    split, _, n_bad = read_class_folders(base, folders, "eurosat", max_bad, layout)
    return ReadResult({"all": split}, info={"layout": "official class folders", "bad_images": n_bad})


def read_resisc45(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """RESISC45: ``NWPU-RESISC45/<class_name>/*.jpg`` with optional tfds split lists."""
    root = Path(root)
    layout = entry["layout"]
    base = first_existing([root / "NWPU-RESISC45", root / "resisc45"]) or root
    folders = [c.replace(" ", "_") for c in entry["classnames"]]
    split_all, _, n_bad = read_class_folders(require_dir(base, layout), folders, "resisc45", max_bad, layout)
    lists = {s: root / f"resisc45-{s}.txt" for s in ("train", "val", "test")}
    if not all(p.is_file() for p in lists.values()):
        return ReadResult({"all": split_all}, info={"split_files": False, "bad_images": n_bad})
    by_name = {os.path.basename(p): i for i, p in enumerate(split_all.paths)}
    splits = {}
    for s, p in lists.items():
        idx = [by_name[n] for n in read_list_file(p) if n in by_name]
        splits[s] = subset_files(split_all, idx, f"resisc45/{s}")
    return ReadResult(splits, info={"split_files": True, "bad_images": n_bad})


def read_dtd(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """DTD: ``images/<class>/*.jpg`` with ``labels/{train,val,test}1.txt`` (partition 1)."""
    root = Path(root)
    layout = entry["layout"]
    base = root / "dtd" if (root / "dtd" / "images").is_dir() else root
    require_dir(base / "images", layout)
    index = {c: i for i, c in enumerate(entry["classnames"])}
    splits, n_bad = {}, 0
    for s in ("train", "val", "test"):
        lst = require_file(base / "labels" / f"{s}1.txt", layout)
        rel = read_list_file(lst)
        labels = []
        for r in rel:
            cls = r.split("/")[0]
            if cls not in index:
                raise PaintError(f"{lst}: class {cls!r} is not one of the {len(index)} DTD classes")
            labels.append(index[cls])
        splits[s], bad = file_split(
            f"dtd/{s}", base, [str(base / "images" / r) for r in rel], labels, len(index), max_bad
        )
        n_bad += bad
    return ReadResult(splits, info={"partition": 1, "bad_images": n_bad})


def read_gtsrb(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """GTSRB: ``Final_Training/Images/000NN/*.ppm`` and ``Final_Test/Images`` + ``GT-final_test.csv``."""
    root = Path(root)
    layout = entry["layout"]
    n = len(entry["classnames"])
    train_dir = first_existing(
        [
            root / "GTSRB" / "Final_Training" / "Images",
            root / "Final_Training" / "Images",
            root / "GTSRB" / "Training",
            root / "Training",
        ]
    )
    if train_dir is None:
        raise PaintError(f"{root}: GTSRB training images not found; expected layout: {layout}")
    paths, labels = [], []
    for d in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        if not d.name.isdigit():
            continue
        files = list_images(d)
        paths += files
        labels += [int(d.name)] * len(files)
    train, bad_tr = file_split("gtsrb/train", root, paths, labels, n, max_bad)
    test_dir = first_existing([root / "GTSRB" / "Final_Test" / "Images", root / "Final_Test" / "Images"])
    gt = first_existing(
        [root / "GT-final_test.csv", root / "GTSRB" / "GT-final_test.csv"]
        + ([test_dir / "GT-final_test.csv"] if test_dir else [])
    )
    if test_dir is None or gt is None:
        raise PaintError(f"{root}: GTSRB test images or GT-final_test.csv not found; expected layout: {layout}")
    rows = csv_records(gt, ("Filename", "ClassId"), delimiter=";")
    if not rows:
        raise PaintError(f"{gt}: no rows; expected a semicolon-separated CSV with Filename and ClassId columns")
    labels = [csv_int(r["ClassId"], gt, i + 1, "ClassId") for i, r in enumerate(rows)]
    paths = [str(test_dir / r["Filename"]) for r in rows]
    test, bad_te = file_split("gtsrb/test", root, paths, labels, n, max_bad, f"gtsrb/test listed in {gt}")
    return ReadResult({"train": train, "test": test}, info={"bad_images": bad_tr + bad_te})


def _norm_scene(name: str) -> str:
    return " ".join(name.replace("/", " ").replace("_", " ").split()).lower()


def read_sun397(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """SUN397 with the official partition 1 (``Training_01.txt`` / ``Testing_01.txt``)."""
    root = Path(root)
    layout = entry["layout"]
    base = first_existing([root / "SUN397"]) or root
    class_file = require_file(
        first_existing([base / "ClassName.txt", root / "ClassName.txt"]) or base / "ClassName.txt", layout
    )
    dirs = read_list_file(class_file)  # "/a/abbey", ...
    wanted = {_norm_scene(c): i for i, c in enumerate(entry["classnames"])}
    dir_label = {}
    for d in dirs:
        key = _norm_scene(d.split("/", 2)[-1])
        if key not in wanted:
            raise PaintError(f"{class_file}: scene {d!r} matches none of the catalog's SUN397 class names")
        dir_label[d.rstrip("/")] = wanted[key]
    splits, n_bad = {}, 0
    for s, fname in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        lst = require_file(
            first_existing([root / fname, root / "Partitions" / fname, base / fname]) or root / fname, layout
        )
        rel = read_list_file(lst)  # "/a/abbey/sun_xxx.jpg"
        labels = [dir_label[r.rsplit("/", 1)[0]] for r in rel]
        splits[s], bad = file_split(
            f"sun397/{s}", base, [str(base / r.lstrip("/")) for r in rel], labels, len(wanted), max_bad
        )
        n_bad += bad
    return ReadResult(splits, info={"partition": 1, "bad_images": n_bad})


def _mat_struct_rows(path: Path, key: str = "annotations") -> list[dict[str, Any]]:
    import scipy.io

    try:
        m = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:
        raise PaintError(f"{path}: cannot read .mat file ({e})") from None
    arr = np.atleast_1d(m[key])
    return [{f: getattr(a, f) for f in a._fieldnames} for a in arr]


def read_stanford_cars(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """Stanford Cars: ``cars_train/``, ``cars_test/`` with the devkit annotation .mat files."""
    root = Path(root)
    layout = entry["layout"]
    n = len(entry["classnames"])
    splits, n_bad = {}, 0
    for s, folder, annos in (
        ("train", "cars_train", ["devkit/cars_train_annos.mat", "cars_train_annos.mat"]),
        ("test", "cars_test", ["cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"]),
    ):
        img_dir = require_dir(root / folder, layout)
        mat = first_existing(root / a for a in annos)
        if mat is None:
            raise PaintError(f"{root}: {annos[0]} not found; expected layout: {layout}")
        rows = _mat_struct_rows(mat)
        paths = [str(img_dir / str(r["fname"])) for r in rows]
        labels = [int(r["class"]) - 1 for r in rows]
        splits[s], bad = file_split(f"cars/{s}", root, paths, labels, n, max_bad)
        n_bad += bad
    return ReadResult(splits, info={"bad_images": n_bad})


def read_food101(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """Food-101: ``images/<class>/<id>.jpg`` with ``meta/{train,test}.txt``."""
    root = Path(root)
    layout = entry["layout"]
    base = root / "food-101" if (root / "food-101").is_dir() else root
    require_dir(base / "images", layout)
    index = {c.replace(" ", "_"): i for i, c in enumerate(entry["classnames"])}
    splits, n_bad = {}, 0
    for s in ("train", "test"):
        rel = read_list_file(require_file(base / "meta" / f"{s}.txt", layout))
        labels = []
        for r in rel:
            cls = r.split("/")[0]
            if cls not in index:
                raise PaintError(f"{base / 'meta' / (s + '.txt')}: class {cls!r} is not one of the Food-101 classes")
            labels.append(index[cls])
        splits[s], bad = file_split(
            f"food101/{s}", base, [str(base / "images" / f"{r}.jpg") for r in rel], labels, len(index), max_bad
        )
        n_bad += bad
    return ReadResult(splits, info={"bad_images": n_bad})
