"""The on-disk cache of preprocessed images: one memory-mapped uint8 ``.npy`` per split and resolution.

Each ``.npy`` (N, 3, S, S) has a ``.json`` beside it with the split's identity, the
resolution and a SHA-256 (first 16 bytes) of every image row. The key (file name) says
*which* data the array should hold; the row digests say whether it *does*: a zeroed or
partly overwritten file used to be trusted and silently cost accuracy (29.0% instead of
48.0% on a zeroed cache). When the cache is opened the rows are hashed once per process
and file state (about 0.25 s for 3,000 images at 224 px, against minutes to decode them),
and a row that fails is decoded again in place, with one warning line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tokenize
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paint.data.parallel import ordered_map
from paint.errors import PaintError
from paint.progress import progress as tqdm
from paint.utils import atomic_path, naming_os_errors, write_json_atomic

log = logging.getLogger("paint.data")

CACHE_FORMAT = 2  # bump when the transform or the file layout changes, so old arrays are not reused
ROW_HASH = "sha256[:16]"
Decoder = Callable[[int], np.ndarray]  # image index -> (3, S, S) uint8

# What np.load raises on a damaged header: NumPy parses the header's dict with Python's tokenizer, so a
# flipped byte there can end in a TokenError (an unclosed bracket) or a SyntaxError, not only a ValueError.
_HEADER_ERRORS = (OSError, ValueError, SyntaxError, tokenize.TokenError)

# path -> (size, mtime_ns) of files whose rows were verified in this process: a sweep that
# opens the same cache once per alpha hashes it once
_VERIFIED: dict[str, tuple[int, int]] = {}


def cache_key(identity: str, resize: int, crop: int) -> str:
    """Cache key of one split at one resolution: a hash of identity, resize, crop and format."""
    text = f"{identity}\0{resize}\0{crop}\0{CACHE_FORMAT}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def cache_path(cache_dir: str | Path, identity: str, resize: int, crop: int) -> Path:
    """Where the cached uint8 array of a split lives (a readable prefix + the key)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", identity)[-60:].strip("_") or "split"
    return Path(cache_dir) / f"{stem}-{crop}px-{cache_key(identity, resize, crop)}.npy"


def row_digest(row: np.ndarray) -> str:
    """Hex digest of one preprocessed image (3, S, S) uint8."""
    return hashlib.sha256(np.ascontiguousarray(row)).hexdigest()[:32]


def bad_rows(path: Path, digests: Sequence[str], chunk: int = 256, progress: bool = False) -> list[int]:
    """Indices of the rows of the ``.npy`` at ``path`` whose bytes no longer match their stored digest.

    The file is read ``chunk`` rows at a time through a map that is dropped after each chunk:
    hashing through one long-lived map would leave the whole file resident in this process.
    ``progress`` shows a bar (a 50,000-image cache at 224 px is 7 GB to hash).
    """

    bad = []
    starts = range(0, len(digests), chunk)
    for start in tqdm(starts, desc=f"verify {path.name}", disable=not progress, unit="chunk", leave=False):
        block = np.load(path, mmap_mode="r")[start : start + chunk]
        bad += [start + i for i in range(len(block)) if row_digest(block[i]) != digests[start + i]]
        del block
    return bad


def _fill(
    out: np.ndarray,
    rows: Iterable[int],
    decode: Decoder,
    digests: list[str],
    desc: str,
    progress: bool,
    num_workers: int | None = 1,
) -> None:
    """Decode ``rows`` into ``out`` and record their digests, ``num_workers`` threads at a time.

    Workers decode and hash; this thread writes each row in index order, so the file and its
    digests are the same bytes whatever the number of workers (:mod:`paint.data.parallel`).
    """

    def decoded(i: int) -> tuple[np.ndarray, str]:
        row = np.empty(out.shape[1:], dtype=out.dtype)
        row[...] = decode(i)  # the cast and checks ``out[i] = ...`` would do, so the digest is of the stored bytes
        return row, row_digest(row)

    rows = list(rows)
    done = zip(rows, ordered_map(decoded, rows, num_workers))
    for i, (row, digest) in tqdm(done, desc=desc, total=len(rows), disable=not progress, unit="img", leave=False):
        out[i] = row
        digests[i] = digest


class _FileRows:
    """The rows of an open uint8 ``.npy``, written with plain file writes.

    Writing through a map of the file would keep every written page in this process's resident set
    until the map closes (7 GB for 50,000 images at 224 px); written through the file they are the
    kernel's page cache, flushed and reclaimed as it sees fit.
    """

    def __init__(self, f: Any, shape: tuple[int, ...]):
        f.seek(0)
        if np.lib.format.read_magic(f) == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        self.f, self.offset, self.shape, self.dtype = f, f.tell(), shape, np.dtype(np.uint8)
        self.row_bytes = int(np.prod(shape[1:]))

    def __setitem__(self, index: int, row: np.ndarray) -> None:
        self.f.seek(self.offset + index * self.row_bytes)
        self.f.write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())


def _file_state(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _open(path: Path, n: int, crop: int) -> tuple[np.ndarray | None, list[str] | None, str]:
    """The mapped array and its digests, or (None, None, why not); "" when there is simply no file."""
    if not path.is_file():
        return None, None, ""
    try:
        arr = np.load(path, mmap_mode="c")  # copy-on-write: lazy pages, and torch gets a writable buffer
    except _HEADER_ERRORS as e:
        return None, None, f"not a readable .npy ({type(e).__name__}: {e})"
    if arr.dtype != np.uint8 or arr.shape != (n, 3, crop, crop):
        return None, None, f"holds {arr.dtype} {arr.shape}, expected uint8 {(n, 3, crop, crop)}"
    try:
        digests = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("row_digests")
    except (OSError, json.JSONDecodeError):
        digests = None
    if not isinstance(digests, list) or len(digests) != n:
        return None, None, "its row checksums are missing"
    return arr, digests, ""


def _build(
    path: Path, n: int, crop: int, decode: Decoder, meta: dict[str, Any], progress: bool, num_workers: int | None = 1
) -> None:
    """Decode every image straight into a memory-mapped file, then its digests (peak: a few images per worker)."""
    digests = [""] * n
    with naming_os_errors(path), atomic_path(path) as tmp:
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, crop, crop))
        del header  # it wrote the header and sized the file; rows go in with plain writes (below)
        with open(tmp, "r+b") as f:
            rows = _FileRows(f, (n, 3, crop, crop))
            _fill(
                rows, range(n), decode, digests, f"preprocess {meta.get('identity', path.name)}", progress, num_workers
            )
    write_json_atomic(
        path.with_suffix(".json"),
        {**meta, "n": n, "format": CACHE_FORMAT, "row_hash": ROW_HASH, "row_digests": digests},
    )


def _repair(
    path: Path, rows: Sequence[int], decode: Decoder, digests: list[str], progress: bool, num_workers: int | None = 1
) -> None:
    """Decode ``rows`` again and write them in place; rewrite the digests if a damaged sidecar held wrong ones."""
    with naming_os_errors(path):
        mm = np.load(path, mmap_mode="r+")
        fresh = list(digests)
        _fill(mm, rows, decode, fresh, f"repair {path.name}", progress, num_workers)
        mm.flush()
        del mm
    if fresh != digests:  # decoding is deterministic: a stored digest, not the fresh row, was wrong
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        write_json_atomic(meta_path, {**meta, "row_digests": fresh})


def cached_images(
    path: Path,
    n: int,
    crop: int,
    decode: Decoder,
    meta: dict[str, Any],
    progress: bool = False,
    num_workers: int | None = 1,
) -> np.ndarray:
    """The verified cache at ``path`` (memory-mapped, copy-on-write), built or repaired as needed.

    Args:
        path: from :func:`cache_path`.
        n, crop: the expected shape (n, 3, crop, crop).
        decode: image index -> (3, crop, crop) uint8, used for missing or damaged rows.
        meta: identity and resolution, stored in the sidecar ``.json``.
        progress: show a progress bar while decoding.
        num_workers: threads that decode (see :func:`paint.data.parallel.resolve_workers`).
    """
    arr, digests, why = _open(path, n, crop)
    if arr is None:
        if why:
            log.warning("cache %s: %s; rebuilding it", path, why)
        _build(path, n, crop, decode, meta, progress, num_workers)
    elif _VERIFIED.get(str(path)) != _file_state(path):
        del arr
        bad = bad_rows(path, digests, progress=progress)
        if bad:
            log.warning(
                "cache %s: %d of %d images failed their checksum (first: image %d); decoding them again",
                path,
                len(bad),
                n,
                bad[0],
            )
            _repair(path, bad, decode, digests, progress, num_workers)
    arr, digests, why = _open(path, n, crop)
    if arr is None:  # pragma: no cover - the file was just written
        raise PaintError(f"cache file {path} could not be read back ({why}); check free disk space")
    _VERIFIED[str(path)] = _file_state(path)
    return arr


def cache_info(cache_dir: str | Path) -> list[dict]:
    """The cached arrays in a directory (identity, resolution, size on disk; digests left out)."""
    out = []
    for meta in sorted(Path(cache_dir).glob("*.json")):
        npy = meta.with_suffix(".npy")
        if npy.is_file():
            try:
                rec = json.loads(meta.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            rec.pop("row_digests", None)
            out.append({**rec, "path": str(npy), "bytes": npy.stat().st_size})
    return out
