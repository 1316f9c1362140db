"""A cache of input files' sha256, keyed by what changes whenever a file's content does.

Hashing the inputs is the one part of a merge that grows with the inputs' size and does not
overlap with the disk on a busy machine (sha256 runs at about 1.5 GB/s a core: 5 GB of inputs
is 3.5 s of CPU). Merging the same checkpoints again (another method, other weights, a sweep)
hashes nothing new: a file whose path, device, inode, size, mtime and ctime are all what they
were when it was hashed has the hash recorded then (the idea of git's index and DVC's state
database). ctime cannot be set from user space, so rewriting a file in place, even with its old
mtime restored, changes the stamp and the file is hashed again.

The cache is a JSON-lines file (``<cache dir>/sha256.jsonl``; the directory is ``$PAINT_CACHE``,
else ``$XDG_CACHE_HOME/paint``, else ``~/.cache/paint``). Entries are appended with one
``O_APPEND`` write each, so concurrent merges cannot interleave inside a line; an unreadable line
(a crash mid-write) is skipped; the file is rewritten (atomically) once it holds four times more
lines than live entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from paint.utils import write_text_atomic

CACHE_FILE = "sha256.jsonl"
_COMPACT_FACTOR = 4  # rewrite when lines > factor * live entries


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file's content without reading it."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def stamp(path: str | os.PathLike) -> FileStamp:
    """The stamp of ``path`` now (its resolved path and ``os.stat`` fields)."""
    p = Path(path).resolve()
    st = os.stat(p)
    return FileStamp(str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$PAINT_CACHE``, else ``$XDG_CACHE_HOME/paint``, else ``~/.cache/paint``."""
    env = os.environ if env is None else env
    if env.get("PAINT_CACHE"):
        return Path(env["PAINT_CACHE"]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "paint"


def _parse(line: str) -> tuple[FileStamp, str] | None:
    try:
        rec = json.loads(line)
        digest = rec.pop("sha256")
        found = FileStamp(**rec)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    ok = isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    return (found, digest) if ok else None


class HashCache:
    """sha256 of files by stamp, read from and appended to one JSON-lines file.

    Args:
        directory: where ``sha256.jsonl`` lives (created on the first store).
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / CACHE_FILE
        self._entries: dict[str, tuple[FileStamp, str]] = {}  # resolved path -> its latest stamp and hash
        self._lines = 0
        if self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                self._lines += 1
                parsed = _parse(line)
                if parsed is not None:
                    self._entries[parsed[0].path] = parsed

    def lookup(self, stamps: Iterable[FileStamp]) -> dict[str, str]:
        """Resolved path -> sha256 for every stamp recorded exactly as given."""
        out = {}
        for s in stamps:
            hit = self._entries.get(s.path)
            if hit is not None and hit[0] == s:
                out[s.path] = hit[1]
        return out

    def store(self, hashed: Mapping[FileStamp, str]) -> None:
        """Record hashes computed from files with these stamps (a file whose stamp moved since is left out)."""
        fresh = [(s, h) for s, h in hashed.items() if stamp(s.path) == s and self._entries.get(s.path) != (s, h)]
        if not fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({**asdict(s), "sha256": h}) + "\n" for s, h in fresh)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        self._entries.update({s.path: (s, h) for s, h in fresh})
        self._lines += len(fresh)
        if self._lines > _COMPACT_FACTOR * max(len(self._entries), 16):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with one line per live entry (atomic: a reader sees the old or the new file)."""
        live = [(s, h) for s, h in self._entries.values() if Path(s.path).exists()]
        write_text_atomic(self.path, "".join(json.dumps({**asdict(s), "sha256": h}) + "\n" for s, h in live))
        self._entries = {s.path: (s, h) for s, h in live}
        self._lines = len(live)
