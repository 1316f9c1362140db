"""SVHN (cropped digits, ``.mat``) and STL-10 (binary), both held in memory as uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paint.data.readers.common import (
    ReadResult,
    array_identity,
    check_labels,
    first_existing,
    require_dir,
    require_file,
)
from paint.data.task import ArraySplit
from paint.errors import PaintError


def read_svhn(root: str | Path) -> ReadResult:
    """SVHN cropped digits: ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 is digit 0)."""
    import scipy.io

    root = Path(root)
    layout = "<root>/train_32x32.mat, <root>/test_32x32.mat"
    require_dir(root, layout)
    splits = {}
    for split in ("train", "test"):
        p = require_file(root / f"{split}_32x32.mat", layout)
        try:
            m = scipy.io.loadmat(p)
        except Exception as e:
            raise PaintError(f"{p}: cannot read .mat file ({e})") from None
        images = np.ascontiguousarray(np.asarray(m["X"], dtype=np.uint8).transpose(3, 0, 1, 2))  # (N, 32, 32, 3)
        labels = np.asarray(m["y"], dtype=np.int64).reshape(-1) % 10
        labels = check_labels(labels, 10, str(p))
        splits[split] = ArraySplit(images, labels, array_identity(f"svhn/{split}", root, images, labels))
    return ReadResult(splits)


def read_stl10(root: str | Path) -> ReadResult:
    """STL-10 binary version: ``stl10_binary/{train,test}_{X,y}.bin`` (column-major 96x96x3, labels 1..10)."""
    root = Path(root)
    layout = "<root>/stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin"
    d = first_existing([root / "stl10_binary", root]) or root
    splits = {}
    for split in ("train", "test"):
        xp, yp = require_file(d / f"{split}_X.bin", layout), require_file(d / f"{split}_y.bin", layout)
        raw = np.fromfile(xp, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise PaintError(f"{xp}: size is not a multiple of one 96x96x3 image; the file is truncated")
        # stored per image as (C, W, H) in column-major order -> (N, H, W, C)
        images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))
        labels = check_labels(np.fromfile(yp, dtype=np.uint8).astype(np.int64) - 1, 10, str(yp))
        if len(labels) != len(images):
            raise PaintError(f"{d}: {len(images)} images but {len(labels)} labels in {split}")
        splits[split] = ArraySplit(images, labels, array_identity(f"stl10/{split}", d, images, labels))
    return ReadResult(splits)
