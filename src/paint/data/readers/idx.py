"""MNIST-like idx files (MNIST, FashionMNIST), gzipped or not, as torchvision and the official site lay them out."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from paint.data.readers.common import ReadResult, array_identity, check_labels, require_dir
from paint.data.task import ArraySplit
from paint.errors import PaintError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise PaintError(f"{path}: cannot read idx file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise PaintError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise PaintError(f"{path}: idx file is truncated ({arr.size} values for shape {dims})")
    return arr.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for d in (root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def read_mnist_like(root: str | Path, n_classes: int = 10, kind: str = "mnist") -> ReadResult:
    """MNIST / FashionMNIST idx files: ``train-images-idx3-ubyte[.gz]`` etc."""
    root = Path(root)
    layout = "<root>/train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
    require_dir(root, layout)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ip, lp = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if ip is None or lp is None:
            raise PaintError(f"{root}: {prefix} idx files not found; expected layout: {layout}")
        images, labels = read_idx(ip), read_idx(lp)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise PaintError(f"{ip}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
        labels = check_labels(labels, n_classes, f"{lp}")
        splits[split] = ArraySplit(images, labels, array_identity(f"{kind}/{split}", root, images, labels))
    return ReadResult(splits)
