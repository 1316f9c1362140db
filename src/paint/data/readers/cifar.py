"""CIFAR-10 / CIFAR-100 python batches, unpickled with a restricted unpickler.

The official batches are pickles; a plain ``pickle.load`` would run whatever a tampered
file asks for. :class:`RestrictedUnpickler` allows only what numpy arrays, lists and dicts
need, and every error names the batch file it came from.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from paint.data.readers.common import ReadResult, array_identity, check_labels, first_existing, require_file
from paint.data.task import ArraySplit
from paint.errors import PaintError


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: only what plain numpy arrays, lists and dicts need.

    Anything else a pickle asks for (``os.system``, ``builtins.eval``, any class) is refused
    with :class:`PaintError` before it is called, so a malicious file runs nothing.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 array pickles
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes pickled at protocol 2 by Python 3 come back through this
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise PaintError(
            f"refusing to load a pickle that asks for {module}.{name}: only plain arrays, lists and dicts "
            "are allowed in dataset files; the file may be malicious or not a CIFAR batch"
        )


def restricted_load(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except PaintError:
        raise
    except Exception as e:
        raise PaintError(f"not a readable pickle ({type(e).__name__}: {e})") from None


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels of one batch; every error names ``path``."""
    try:
        d = restricted_load(path.read_bytes())
    except PaintError as e:
        raise PaintError(f"{path}: {e}") from None
    if not isinstance(d, dict):
        raise PaintError(f"{path}: expected a dict in a CIFAR batch, found {type(d).__name__}")
    d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    if b"data" not in d or label_key not in d:
        raise PaintError(f"{path}: CIFAR batch lacks {b'data'!r} or {label_key!r}")
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (ValueError, TypeError) as e:
        raise PaintError(f"{path}: CIFAR batch data is not 3x32x32 uint8 images with integer labels ({e})") from None
    if len(labels) != len(data):
        raise PaintError(f"{path}: CIFAR batch has {len(data)} images but {len(labels)} labels")
    return np.ascontiguousarray(data), labels


def read_cifar(root: str | Path, n_classes: int) -> ReadResult:
    """CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) python batches."""
    root = Path(root)
    if n_classes == 10:
        layout = "<root>/cifar-10-batches-py/data_batch_1..5, test_batch"
        d = first_existing([root / "cifar-10-batches-py", root]) or root
        require_file(d / "test_batch", layout)
        files = {"train": [d / f"data_batch_{i}" for i in range(1, 6)], "test": [d / "test_batch"]}
        key = b"labels"
    else:
        layout = "<root>/cifar-100-python/train, test"
        d = first_existing([root / "cifar-100-python", root]) or root
        require_file(d / "test", layout)
        files = {"train": [d / "train"], "test": [d / "test"]}
        key = b"fine_labels"
    splits = {}
    for split, paths in files.items():
        parts = [_cifar_batch(require_file(p, layout), key) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        labels = check_labels(np.concatenate([p[1] for p in parts]), n_classes, f"CIFAR at {d}")
        splits[split] = ArraySplit(images, labels, array_identity(f"cifar{n_classes}/{split}", d, images, labels))
    return ReadResult(splits)
