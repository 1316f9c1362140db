"""KITTI object 'training' images turned into closest-vehicle-distance classes, split by video as PAINT does."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paint.data.readers.common import DEFAULT_MAX_BAD, ReadResult, file_split, require_dir, require_file
from paint.errors import PaintError

KITTI_VEHICLES = ("Car", "Van", "Truck")
KITTI_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)  # metres; as in VTAB / the PAINT code


def kitti_distance_label(label_text: str) -> int:
    """Class of one KITTI label file: closest Car/Van/Truck depth z; 3 when there is none."""
    zs = [10000.0]
    for line in label_text.splitlines():
        parts = line.split()
        if len(parts) >= 14 and parts[0] in KITTI_VEHICLES:
            zs.append(float(parts[13]))
    dist = min(zs)
    return int(max(i for i, t in enumerate(KITTI_THRESHOLDS) if t < dist))


def kitti_video_splits(mapping_rand: str, mapping_lines: Sequence[str], n_images: int) -> dict[str, list[int]]:
    """Split image ids by video (drive) as the PAINT code does: numpy seed 123, 10% test, 10% val videos."""
    ids = [int(x.strip()) - 1 for x in mapping_rand.split(",") if x.strip()]
    videos: dict[str, list[int]] = {}
    for image_id, line_id in enumerate(ids[:n_images]):
        videos.setdefault(mapping_lines[line_id].split(" ")[1], []).append(image_id)
    rng = np.random.RandomState(123)  # same stream as np.random.seed(123) + np.random.choice
    n_test = max(1, 10 * len(videos) // 100)
    n_val = max(1, 10 * len(videos) // 100)
    test_v = set(rng.choice(sorted(videos), n_test, replace=False))
    val_v = set(rng.choice(sorted(set(videos) - test_v), n_val, replace=False))
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for v, imgs in videos.items():
        out["test" if v in test_v else "val" if v in val_v else "train"].extend(imgs)
    return {k: sorted(v) for k, v in out.items()}


def _kitti_mapping(root: Path, layout: str) -> tuple[str, list[str]]:
    for d in (root, root / "raw"):
        if (d / "mapping" / "train_rand.txt").is_file() and (d / "mapping" / "train_mapping.txt").is_file():
            return (d / "mapping" / "train_rand.txt").read_text(), (
                d / "mapping" / "train_mapping.txt"
            ).read_text().splitlines()
        z = d / "devkit_object.zip"
        if z.is_file():
            with zipfile.ZipFile(z) as f:
                return f.read("mapping/train_rand.txt").decode(), f.read(
                    "mapping/train_mapping.txt"
                ).decode().splitlines()
    raise PaintError(
        f"{root}: KITTI devkit mapping (train_rand.txt, train_mapping.txt) not found; expected layout: {layout}"
    )


def read_kitti_distance(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """KITTI object 'training' images with labels turned into closest-vehicle-distance classes."""
    root = Path(root)
    layout = entry["layout"]
    base = root / "raw" if (root / "raw" / "training").is_dir() else root
    img_dir = require_dir(base / "training" / "image_2", layout)
    lab_dir = require_dir(base / "training" / "label_2", layout)
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".png")
    rand, lines = _kitti_mapping(root, layout)
    parts = kitti_video_splits(rand, lines, len(images))
    by_id = {int(p.stem): p for p in images if p.stem.isdigit()}
    splits, n_bad = {}, 0
    for s, ids in parts.items():
        ids = [i for i in ids if i in by_id]
        labels = [kitti_distance_label(require_file(lab_dir / f"{i:06d}.txt", layout).read_text()) for i in ids]
        splits[s], bad = file_split(f"kitti/{s}", base, [str(by_id[i]) for i in ids], labels, 4, max_bad)
        n_bad += bad
    return ReadResult(splits, info={"split": "by video, numpy seed 123 (PAINT)", "bad_images": n_bad})
