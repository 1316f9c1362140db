"""Small shared helpers: atomic file output, JSON/JSONL, YAML, hashing, seeding."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

log = logging.getLogger(__name__)

# Every temporary entry that atomic_path creates is named ``.paint-tmp.<pid>.<target>.<suffix>``:
# a run that finds one whose process is gone knows it was left by a kill (see clean_stale_temps).
TEMP_PREFIX = ".paint-tmp."
_TEMP_RE = re.compile(r"^\.paint-tmp\.(\d+)\.")


def temp_owner(name: str) -> int | None:
    """The pid that created the atomic-write temporary called ``name``, or None if it is not one."""
    m = _TEMP_RE.match(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_path(p: Path) -> Path:
    """Remove a file, link or directory tree (gone already is fine); returns ``p``."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return p


def clean_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Remove the atomic-write temporaries under ``root`` whose creating process is gone.

    A process killed inside :func:`atomic_path` (SIGKILL, power loss) leaves its temporary
    directory behind; nothing else would ever remove it. Temporaries of live processes (a
    shared cache written by another run right now) are kept. Returns what was removed.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames) + filenames:
            pid = temp_owner(name)
            if pid is None or pid_alive(pid):
                continue
            removed.append(remove_path(Path(dirpath) / name))
        dirnames[:] = [d for d in dirnames if temp_owner(d) is None]  # never descend into a temporary
    return removed


def _as_os_error(err: Exception, path: Path) -> OSError | None:
    """An I/O failure reported by safetensors (a Rust ``IoError``) as an OSError naming ``path``."""
    text = str(err)  # e.g. "Error while serializing: I/O error: No space left on device (os error 28)"
    if not any(marker in text for marker in ("I/O error", "IoError", "os error")):
        return None
    m = re.search(r"(?:os error |code: )(\d+)", text)
    code = int(m.group(1)) if m else errno.EIO
    return OSError(code, os.strerror(code), str(path))


@contextlib.contextmanager
def naming_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a write into a full disk, an mmap) as one naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Works for files and directories: whatever the caller writes at the yielded path
    replaces ``path`` with ``os.replace`` (an existing directory is removed first), so a
    reader never sees a half-written output and a crash leaves the old one intact. The
    temporaries carry :data:`TEMP_PREFIX` and the pid, so that the next run can remove
    what a killed one left (:func:`clean_stale_temps`). An I/O error that safetensors
    reports in its own exception type is raised as an ``OSError`` naming ``path``.
    """
    from safetensors import SafetensorError

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}.{target.name}.", dir=target.parent))
    tmp = tmp_dir / target.name
    try:
        try:
            yield tmp
        except SafetensorError as e:
            os_err = _as_os_error(e, target)
            if os_err is None:
                raise
            raise os_err from e
        if tmp.is_dir() and target.is_dir():
            old = target.parent / f"{TEMP_PREFIX}{os.getpid()}.{target.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Write records as JSON lines (the :func:`append_jsonl` format), replacing ``path`` atomically."""
    write_text_atomic(path, "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records))


def json_checksum(obj: Any) -> str:
    """SHA-256 (hex) of ``obj``'s canonical JSON: sorted keys, no spaces, as it reads back from a file.

    ``obj`` goes through a JSON round trip first, so a value and the same value read back from a
    JSON line (a tuple as a list, an int key as a string) have the same checksum.
    """
    canonical = json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _ends_torn(path: Path) -> bool:
    """Whether the file is non-empty and its last byte is not a newline (a torn last line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as a line, flushed and fsynced (a crash loses at most this line).

    A torn last line (a crash or a full disk mid-write) is ended first, so the new record
    starts on its own line instead of being glued to the fragment and lost with it. A
    failed write is raised as an ``OSError`` that names the file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    try:
        with open(p, "a", encoding="utf-8") as f:
            if _ends_torn(p):
                line = "\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(p)) from e
        raise


def read_jsonl_checked(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSONL file and the number of lines that are not a JSON object (skipped)."""
    p = Path(path)
    if not p.exists():
        return [], 0
    out, bad = [], 0
    for line in p.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read records, skipping lines that are not JSON objects (a torn line left by a crash)."""
    return read_jsonl_checked(path)[0]


def sha256_strings(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes), order-independent."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
