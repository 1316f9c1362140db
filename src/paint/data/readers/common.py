"""What every reader shares: the result type, path checks, label checks, identities, file splits.

A split's ``identity`` keys the preprocessing cache, so it must change whenever the
content does: file lists hash names, sizes, mtimes and labels; arrays hash their bytes.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paint.data.images import check_image
from paint.data.task import FileSplit, ImageSplit
from paint.errors import PaintError
from paint.progress import progress as tqdm
from paint.utils import sha256_strings

log = logging.getLogger("paint.data")

DEFAULT_MAX_BAD = 0.01
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp")

__all__ = [
    "DEFAULT_MAX_BAD",
    "IMAGE_EXTS",
    "FileSplit",
    "ReadResult",
    "array_identity",
    "check_labels",
    "csv_int",
    "csv_records",
    "file_split",
    "files_identity",
    "filter_readable",
    "first_existing",
    "is_int",
    "list_images",
    "read_csv_rows",
    "read_list_file",
    "require_dir",
    "require_file",
    "subset_files",
]


@dataclass(frozen=True)
class ReadResult:
    """What a reader found: splits by name, class names carried by the data, info for results."""

    splits: Mapping[str, ImageSplit]
    classnames: tuple[str, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def require_dir(path: Path, layout: str) -> Path:
    """``path`` if it is a directory, else a PaintError that names the expected layout."""
    if not path.is_dir():
        raise PaintError(f"directory {path} not found; expected layout: {layout}")
    return path


def require_file(path: Path, layout: str) -> Path:
    """``path`` if it is a file, else a PaintError that names the expected layout."""
    if not path.is_file():
        raise PaintError(f"file {path} not found; expected layout: {layout}")
    return path


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """The first candidate that exists (downloads nest their folders differently)."""
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


def filter_readable(
    paths: Sequence[str], labels: np.ndarray, where: str, max_bad_fraction: float = DEFAULT_MAX_BAD
) -> tuple[list[str], np.ndarray, int]:
    """Drop files that do not decode as images; one warning line, or an error past the threshold.

    Truncated JPEGs are caught here (see :func:`paint.data.images.check_image`), so they count
    against ``max_bad_fraction`` instead of aborting preprocessing later. Images over PIL's
    pixel limit are kept and reported in one line of their own.

    Returns:
        (kept paths, kept labels, number dropped).
    """

    checked = tqdm(paths, desc=f"check {where}", unit="file", leave=False, disable=len(paths) < 5000)
    results = [check_image(p) for p in checked]
    ok = np.fromiter((r.problem is None for r in results), dtype=bool, count=len(paths))
    n_bad = int((~ok).sum())
    if n_bad:
        frac = n_bad / max(1, len(paths))
        first, why = next((p, r.problem) for p, r in zip(paths, results) if r.problem is not None)
        if frac > max_bad_fraction:
            raise PaintError(
                f"{where}: {n_bad} of {len(paths)} images are unreadable ({frac:.1%} > the "
                f"{max_bad_fraction:.1%} allowed), e.g. {first} ({why}); fix the data or raise max_bad_fraction"
            )
        log.warning("%s: skipped %d unreadable of %d images (e.g. %s: %s)", where, n_bad, len(paths), first, why)
    huge = [p for p, r, k in zip(paths, results, ok) if r.huge and k]
    if huge:
        log.warning(
            "%s: %d images exceed %d pixels (e.g. %s); they decode slowly and need much memory",
            where,
            len(huge),
            Image.MAX_IMAGE_PIXELS,
            huge[0],
        )
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
    """An identity from the arrays' shapes and bytes (in-memory formats have no per-file mtimes)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return f"{kind}:{root.resolve()}:{h.hexdigest()[:16]}"


def file_split(
    kind: str,
    root: Path,
    paths: Sequence[str],
    labels: Sequence[int],
    n_classes: int,
    max_bad: float,
    where: str | None = None,
) -> tuple[FileSplit, int]:
    """A checked :class:`FileSplit` (labels in range, unreadable files dropped) and the number dropped.

    ``where`` is what errors and warnings name (default ``"<kind> at <root>"``); a split listed
    in a CSV names the CSV file, the file a user can fix. ``root`` keys the identity either way.
    """
    where = where or f"{kind} at {root}"
    labels = check_labels(np.asarray(labels), n_classes, where)
    if len(paths) == 0:
        raise PaintError(f"{where}: no images found")
    kept, kept_labels, n_bad = filter_readable(list(paths), labels, where, max_bad)
    return FileSplit(tuple(kept), kept_labels, files_identity(kind, root, kept, kept_labels)), n_bad


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), sorted so labels and identities are stable."""
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def read_list_file(path: Path) -> list[str]:
    """Non-empty stripped lines of a split list (DTD, SUN397, Food-101, RESISC45)."""
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def subset_files(split: FileSplit, idx: Sequence[int], kind: str) -> FileSplit:
    """The files of ``split`` at ``idx``, with an identity that names the subset."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        raise PaintError(f"{kind}: the split list matches no images on disk")
    paths = tuple(split.paths[i] for i in idx)
    return FileSplit(paths, split.labels[idx], f"{split.identity}/{kind}-{sha256_strings(map(str, idx.tolist()))[:12]}")


def read_csv_rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    """The rows of a CSV file; one that is not UTF-8 text or not CSV is a one-line error naming it.

    A UTF-8 byte-order mark (spreadsheets write one) is dropped, so it does not hide a header.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f, delimiter=delimiter))
    except UnicodeDecodeError as e:
        raise PaintError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    except csv.Error as e:
        raise PaintError(f"{path}: not a readable CSV ({e})") from None


def csv_records(path: Path, columns: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as ``{column: cell}``; every one of ``columns`` must be there."""
    rows = read_csv_rows(path, delimiter)
    header = [c.strip() for c in rows[0]] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise PaintError(
            f"{path}: no column {missing[0]!r} in the header (found: {', '.join(header) or 'no header'}); "
            f"expected a {delimiter!r}-separated CSV with columns {', '.join(columns)}"
        )
    records = [r for r in rows[1:] if any(c.strip() for c in r)]
    return [{c: (r[i].strip() if i < len(r) else "") for i, c in enumerate(header)} for r in records]


_INT = re.compile(r"-?[0-9]+")


def is_int(text: str) -> bool:
    """Whether ``text`` is a plain decimal integer (ASCII digits: ``int()`` accepts it)."""
    return _INT.fullmatch(text.strip()) is not None


def csv_int(value: str | None, path: Path, row: int, column: str) -> int:
    """A CSV cell as an integer, or a one-line error naming the file, row (1 = first data row) and column."""
    if value is None or not is_int(value):
        raise PaintError(f"{path} row {row}: {column} {value!r} is not an integer")
    return int(value)
