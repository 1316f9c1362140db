"""Readers for standard dataset layouts, without torchvision.

Every reader returns :class:`ReadResult`: the splits it found on disk (some of ``train``,
``val``, ``test``), the class names the data itself carries (folder names, a ClassLabel
feature) when it has them, and a small ``info`` dict for the results. Splits are lazy:
files are decoded only when the preprocessing step asks for them, and array formats
(idx, CIFAR, SVHN, STL-10) are held in memory as uint8.

Bad data: image files are opened once at read time (header only). Unreadable ones are
counted, skipped and reported in ONE warning line; more than ``max_bad_fraction`` of a
split raises :class:`PaintError`. A missing directory names the layout that was expected,
and a label outside the class list is an error.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paint.data.task import ArraySplit, FileSplit, ImageSplit
from paint.errors import PaintError
from paint.utils import sha256_strings

log = logging.getLogger("paint.data")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_MAX_BAD = 0.01


@dataclass(frozen=True)
class ReadResult:
    """What a reader found: splits by name, class names carried by the data, info for results."""

    splits: Mapping[str, ImageSplit]
    classnames: tuple[str, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def require_dir(path: Path, layout: str) -> Path:
    """``path`` if it is a directory, else a PaintError that names the expected layout."""
    if not path.is_dir():
        raise PaintError(f"directory {path} not found; expected layout: {layout}")
    return path


def require_file(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise PaintError(f"file {path} not found; expected layout: {layout}")
    return path


def first_existing(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


def check_labels(labels: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    """int64 labels, refusing any outside ``[0, n_classes)``."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        bad = int(labels[(labels < 0) | (labels >= n_classes)][0])
        raise PaintError(
            f"{where}: label {bad} is outside the {n_classes} class names; the class list does not fit the data"
        )
    return labels


def _header_ok(path: str) -> bool:
    """Open the file as an image (header only; cheap). Truncated pixel data is caught at decode."""
    try:
        if os.path.getsize(path) == 0:
            return False
        with Image.open(path) as im:
            im.verify()  # PNG: chunk CRCs; other formats: structural checks only
        return True
    except Exception:
        return False


def filter_readable(
    paths: Sequence[str], labels: np.ndarray, where: str, max_bad_fraction: float = DEFAULT_MAX_BAD
) -> tuple[list[str], np.ndarray, int]:
    """Drop files that do not open as images; one warning line, or an error past the threshold.

    Returns:
        (kept paths, kept labels, number dropped).
    """
    from paint.progress import progress as tqdm

    checked = tqdm(paths, desc=f"check {where}", unit="file", leave=False, disable=len(paths) < 5000)
    ok = np.fromiter((_header_ok(p) for p in checked), dtype=bool, count=len(paths))
    n_bad = int((~ok).sum())
    if n_bad:
        frac = n_bad / max(1, len(paths))
        first = next(p for p, k in zip(paths, ok) if not k)
        if frac > max_bad_fraction:
            raise PaintError(
                f"{where}: {n_bad} of {len(paths)} images are unreadable ({frac:.1%} > the "
                f"{max_bad_fraction:.1%} allowed), e.g. {first}; fix the data or raise max_bad_fraction"
            )
        log.warning("%s: skipped %d unreadable of %d images (e.g. %s)", where, n_bad, len(paths), first)
    kept = [p for p, k in zip(paths, ok) if k]
    return kept, np.asarray(labels)[ok], n_bad


def files_identity(kind: str, root: Path, paths: Sequence[str], labels: np.ndarray) -> str:
    """An identity that changes when any file, its size, its mtime or its label changes."""

    def parts():
        for p, y in zip(paths, labels.tolist()):
            st = os.stat(p)
            yield f"{os.path.relpath(p, root)}|{y}|{st.st_size}|{st.st_mtime_ns}"

    return f"{kind}:{root.resolve()}:{len(paths)}:{sha256_strings(parts())[:16]}"


def array_identity(kind: str, root: Path, *arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return f"{kind}:{root.resolve()}:{h.hexdigest()[:16]}"


def file_split(
    kind: str, root: Path, paths: Sequence[str], labels: Sequence[int], n_classes: int, max_bad: float
) -> tuple[FileSplit, int]:
    """A checked :class:`FileSplit` (labels in range, unreadable files dropped)."""
    labels = check_labels(np.asarray(labels), n_classes, f"{kind} at {root}")
    if len(paths) == 0:
        raise PaintError(f"{kind} at {root}: no images found")
    kept, kept_labels, n_bad = filter_readable(list(paths), labels, f"{kind} at {root}", max_bad)
    return FileSplit(tuple(kept), kept_labels, files_identity(kind, root, kept, kept_labels)), n_bad


def list_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


# ----------------------------------------------------------------------------- image folders


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
            split, names, bad = read_class_folders(root / s, _match_folders(root / s, folders), f"folder/{s}", max_bad, layout)
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


# ----------------------------------------------------------------------------- CSV


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


# ----------------------------------------------------------------------------- MNIST idx

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


# ----------------------------------------------------------------------------- CIFAR (restricted pickle)


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
    d = restricted_load(path.read_bytes())
    if not isinstance(d, dict):
        raise PaintError(f"{path}: expected a dict in a CIFAR batch")
    d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    if b"data" not in d or label_key not in d:
        raise PaintError(f"{path}: CIFAR batch lacks {b'data'!r} or {label_key!r}")
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return np.ascontiguousarray(data), np.asarray(d[label_key], dtype=np.int64)


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


# ----------------------------------------------------------------------------- SVHN .mat


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


# ----------------------------------------------------------------------------- STL-10 binary


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


# ----------------------------------------------------------------------------- benchmark layouts


def _read_list_file(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


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
        idx = [by_name[n] for n in _read_list_file(p) if n in by_name]
        splits[s] = _subset_files(split_all, idx, f"resisc45/{s}")
    return ReadResult(splits, info={"split_files": True, "bad_images": n_bad})


def _subset_files(split: FileSplit, idx: Sequence[int], kind: str) -> FileSplit:
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        raise PaintError(f"{kind}: the split list matches no images on disk")
    paths = tuple(split.paths[i] for i in idx)
    return FileSplit(paths, split.labels[idx], f"{split.identity}/{kind}-{sha256_strings(map(str, idx.tolist()))[:12]}")


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
        rel = _read_list_file(lst)
        labels = []
        for r in rel:
            cls = r.split("/")[0]
            if cls not in index:
                raise PaintError(f"{lst}: class {cls!r} is not one of the {len(index)} DTD classes")
            labels.append(index[cls])
        splits[s], bad = file_split(f"dtd/{s}", base, [str(base / "images" / r) for r in rel], labels, len(index), max_bad)
        n_bad += bad
    return ReadResult(splits, info={"partition": 1, "bad_images": n_bad})


def read_gtsrb(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """GTSRB: ``Final_Training/Images/000NN/*.ppm`` and ``Final_Test/Images`` + ``GT-final_test.csv``."""
    root = Path(root)
    layout = entry["layout"]
    n = len(entry["classnames"])
    train_dir = first_existing(
        [root / "GTSRB" / "Final_Training" / "Images", root / "Final_Training" / "Images", root / "GTSRB" / "Training", root / "Training"]
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
    gt = first_existing([root / "GT-final_test.csv", root / "GTSRB" / "GT-final_test.csv"] + ([test_dir / "GT-final_test.csv"] if test_dir else []))
    if test_dir is None or gt is None:
        raise PaintError(f"{root}: GTSRB test images or GT-final_test.csv not found; expected layout: {layout}")
    with open(gt, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    if not rows or "ClassId" not in rows[0]:
        raise PaintError(f"{gt}: expected a semicolon-separated CSV with Filename and ClassId columns")
    test, bad_te = file_split(
        "gtsrb/test", root, [str(test_dir / r["Filename"]) for r in rows], [int(r["ClassId"]) for r in rows], n, max_bad
    )
    return ReadResult({"train": train, "test": test}, info={"bad_images": bad_tr + bad_te})


def _norm_scene(name: str) -> str:
    return " ".join(name.replace("/", " ").replace("_", " ").split()).lower()


def read_sun397(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """SUN397 with the official partition 1 (``Training_01.txt`` / ``Testing_01.txt``)."""
    root = Path(root)
    layout = entry["layout"]
    base = first_existing([root / "SUN397"]) or root
    class_file = require_file(first_existing([base / "ClassName.txt", root / "ClassName.txt"]) or base / "ClassName.txt", layout)
    dirs = _read_list_file(class_file)  # "/a/abbey", ...
    wanted = {_norm_scene(c): i for i, c in enumerate(entry["classnames"])}
    dir_label = {}
    for d in dirs:
        key = _norm_scene(d.split("/", 2)[-1])
        if key not in wanted:
            raise PaintError(f"{class_file}: scene {d!r} matches none of the catalog's SUN397 class names")
        dir_label[d.rstrip("/")] = wanted[key]
    splits, n_bad = {}, 0
    for s, fname in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        lst = require_file(first_existing([root / fname, root / "Partitions" / fname, base / fname]) or root / fname, layout)
        rel = _read_list_file(lst)  # "/a/abbey/sun_xxx.jpg"
        labels = [dir_label[r.rsplit("/", 1)[0]] for r in rel]
        splits[s], bad = file_split(f"sun397/{s}", base, [str(base / r.lstrip("/")) for r in rel], labels, len(wanted), max_bad)
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
        rel = _read_list_file(require_file(base / "meta" / f"{s}.txt", layout))
        labels = []
        for r in rel:
            cls = r.split("/")[0]
            if cls not in index:
                raise PaintError(f"{base / 'meta' / (s + '.txt')}: class {cls!r} is not one of the Food-101 classes")
            labels.append(index[cls])
        splits[s], bad = file_split(f"food101/{s}", base, [str(base / "images" / f"{r}.jpg") for r in rel], labels, len(index), max_bad)
        n_bad += bad
    return ReadResult(splits, info={"bad_images": n_bad})


def read_imagenet(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """ImageNet: ``val/<wnid>/`` folders (or flat val + ``LOC_val_solution.csv``), optional ``train/<wnid>/``."""
    root = Path(root)
    layout = entry["layout"]
    n = len(entry["classnames"])
    val = require_dir(root / "val", layout)
    wnid_dirs = sorted(p.name for p in val.iterdir() if p.is_dir())
    splits, n_bad = {}, 0
    if wnid_dirs:
        if len(wnid_dirs) != n:
            raise PaintError(f"{val}: found {len(wnid_dirs)} class folders, expected {n} wnid folders")
        splits["test"], _, bad = read_class_folders(val, wnid_dirs, "imagenet/val", max_bad, layout)
        n_bad += bad
        wnids = wnid_dirs
    else:
        sol = require_file(root / "LOC_val_solution.csv", layout)
        with open(sol, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        firsts = {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}
        wnids = sorted(set(firsts.values()))
        if len(wnids) != n:
            raise PaintError(f"{sol}: {len(wnids)} distinct wnids, expected {n}")
        index = {w: i for i, w in enumerate(wnids)}
        ids = sorted(firsts)
        splits["test"], bad = file_split(
            "imagenet/val", root, [str(val / f"{i}.JPEG") for i in ids], [index[firsts[i]] for i in ids], n, max_bad
        )
        n_bad += bad
    if (root / "train").is_dir():
        splits["train"], _, bad = read_class_folders(root / "train", wnids, "imagenet/train", max_bad, layout)
        n_bad += bad
    return ReadResult(splits, info={"bad_images": n_bad})


# ----------------------------------------------------------------------------- KITTI distance

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
            return (d / "mapping" / "train_rand.txt").read_text(), (d / "mapping" / "train_mapping.txt").read_text().splitlines()
        z = d / "devkit_object.zip"
        if z.is_file():
            with zipfile.ZipFile(z) as f:
                return f.read("mapping/train_rand.txt").decode(), f.read("mapping/train_mapping.txt").decode().splitlines()
    raise PaintError(f"{root}: KITTI devkit mapping (train_rand.txt, train_mapping.txt) not found; expected layout: {layout}")


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


# ----------------------------------------------------------------------------- Hugging Face datasets


@dataclass(frozen=True)
class HFSplit:
    """A split of a Hugging Face ``datasets.Dataset`` with an image and an integer label column."""

    dataset: Any
    image_column: str
    labels: np.ndarray
    identity: str

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        item = self.dataset[int(index)][self.image_column]
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        if isinstance(item, dict) and item.get("bytes") is not None:
            return Image.open(io.BytesIO(item["bytes"])).convert("RGB")
        if isinstance(item, dict) and item.get("path"):
            with Image.open(item["path"]) as im:
                return im.convert("RGB")
        if isinstance(item, np.ndarray):
            return Image.fromarray(item).convert("RGB")
        raise PaintError(f"{self.identity}: column {self.image_column!r} does not hold images")


_HF_SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def _load_hf(path_or_id: str) -> Any:
    import datasets

    p = Path(path_or_id)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            return datasets.load_from_disk(str(p))
        parquet = sorted(p.rglob("*.parquet"))
        if parquet:
            files: dict[str, list[str]] = {}
            for f in parquet:
                name = next((s for s in _HF_SPLIT_NAMES if f.name.startswith(s) or f.parent.name == s), "train")
                files.setdefault(name, []).append(str(f))
            return datasets.load_dataset("parquet", data_files=files)
        return datasets.load_dataset("imagefolder", data_dir=str(p))
    if p.suffix == ".parquet" and p.is_file():
        return datasets.load_dataset("parquet", data_files={"train": [str(p)]})
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id) and not p.exists():  # a hub id like "user/name"
        try:
            return datasets.load_dataset(path_or_id)
        except Exception as e:
            raise PaintError(f"Hugging Face dataset {path_or_id!r} could not be loaded ({type(e).__name__}); "
                             "offline? use a local save_to_disk/parquet/imagefolder directory") from None
    raise PaintError(f"{path_or_id}: not a directory, parquet file or hub id; expected a datasets save_to_disk, "
                     "parquet or imagefolder directory")


def read_hf(
    path_or_id: str, image_column: str = "image", label_column: str = "label", classnames: Sequence[str] | None = None
) -> ReadResult:
    """A Hugging Face dataset (local ``save_to_disk`` / parquet / imagefolder, or a hub id) with a column mapping."""
    import datasets

    ds = _load_hf(path_or_id)
    if isinstance(ds, datasets.Dataset):
        ds = {"train": ds}
    splits, names = {}, None
    for key, d in ds.items():
        name = _HF_SPLIT_NAMES.get(key)
        if name is None:
            continue
        for col in (image_column, label_column):
            if col not in d.column_names:
                raise PaintError(f"{path_or_id} split {key!r}: no column {col!r} (columns: {', '.join(d.column_names)}); "
                                 "set image_column / label_column")
        feat = d.features[label_column]
        if getattr(feat, "names", None):
            names = tuple(feat.names)
        labels = np.asarray(d[label_column])
        if labels.dtype.kind not in "iu":
            vocab = list(classnames) if classnames is not None else sorted(set(labels.tolist()))
            index = {v: i for i, v in enumerate(vocab)}
            if any(v not in index for v in labels.tolist()):
                bad = next(v for v in labels.tolist() if v not in index)
                raise PaintError(f"{path_or_id}: label {bad!r} is not one of the class names")
            labels = np.asarray([index[v] for v in labels.tolist()])
            names = names or tuple(vocab)
        fp = getattr(d, "_fingerprint", None) or sha256_strings(map(str, labels.tolist()))[:16]
        splits[name] = HFSplit(d, image_column, labels.astype(np.int64), f"hf:{path_or_id}:{key}:{fp}")
    if not splits:
        raise PaintError(f"{path_or_id}: no train/validation/test split found (has: {', '.join(ds)})")
    return ReadResult(splits, names)


# ----------------------------------------------------------------------------- dispatch by catalog reader name

CATALOG_READERS: dict[str, Callable[..., ReadResult]] = {
    "stanford_cars": read_stanford_cars,
    "dtd": read_dtd,
    "eurosat": read_eurosat,
    "gtsrb": read_gtsrb,
    "kitti_distance": read_kitti_distance,
    "resisc45": read_resisc45,
    "sun397": read_sun397,
    "imagenet": read_imagenet,
    "food101": read_food101,
}


def read_catalog_layout(root: str | Path, entry: Mapping[str, Any], max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """Read a catalog task from ``root`` with the reader its entry names."""
    reader = entry["reader"]
    n = len(entry["classnames"])
    if reader == "idx":
        return read_mnist_like(root, n, entry["name"])
    if reader == "cifar":
        return read_cifar(root, n)
    if reader == "svhn_mat":
        return read_svhn(root)
    if reader == "stl10_binary":
        return read_stl10(root)
    if reader not in CATALOG_READERS:
        raise PaintError(f"catalog entry {entry['name']!r} names unknown reader {reader!r}")
    return CATALOG_READERS[reader](root, entry, max_bad)
