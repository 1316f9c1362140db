"""Exclusive locks on a run directory or on a command's output: :class:`FileLock` (an ``fcntl.flock``
that records its holder's pid and host) and :func:`output_lock` (the lock and stale-temporary cleanup of a
command that replaces a whole output directory: ``paint merge``, ``paint interpolate``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from paint.errors import PaintError
from paint.utils import (
    TEMP_PREFIX,
    pid_alive,
    remove_path,
    temp_owner,
)

log = logging.getLogger(__name__)

LOCK_NAME = ".paint.lock"  # a run directory's lock file (an output's: .<name>.paint.lock beside it)


class FileLock:
    """An exclusive ``fcntl.flock`` on one file that records its holder's pid and host.

    ``flock`` is released by the kernel when its process dies, so a lock file left by a
    killed process is free to take; its recorded pid is then reported as taken over (a
    warning, and :attr:`took_over`). Where ``flock`` is unsupported (some network file
    systems) the recorded pid decides: a live process on this host holds the lock, a dead one
    does not. :class:`RunDir` locks a run directory with it, :func:`output_lock` the output of a
    command that replaces a whole directory (``paint merge``, ``paint interpolate``).

    Args:
        path: the lock file (created if missing; removed on :meth:`release`).
        label: what the lock guards, for the take-over warning.
        refusal: the one-line error for a held lock, from the holder's description ("pid N on host").
    """

    def __init__(self, path: Path, label: str, refusal: Callable[[str], str]):
        self.path = path
        self.label = label
        self.refusal = refusal
        self.took_over: dict[str, Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PaintError` (``refusal``) at once when another process holds it."""
        if self._fd is not None:
            return
        fd = self._open_locked()
        stale = _read_holder(fd)
        if stale:
            log.warning(
                "%s: taking over the lock left by %s, which is no longer running (killed?)",
                self.label,
                _describe(stale),
            )
        self.took_over = stale
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _open_locked(self) -> int:
        """An open descriptor of the current lock file with the lock taken (or the refusal raised)."""

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise PaintError(self.refusal(_describe(holder))) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = _read_holder(fd)
                if holder and _holder_alive(holder) and holder.get("pid") != os.getpid():
                    os.close(fd)
                    raise PaintError(self.refusal(_describe(holder))) from None
            # The file may have been removed (and recreated) by its previous holder between our
            # open and flock: then we locked an orphan inode; start again on the current file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def release(self) -> None:
        """Release the lock (and remove the lock file); a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still locked: a newcomer either sees no file or a fresh one
        os.close(fd)

    def __del__(self) -> None:  # a forgotten release must not keep the file locked forever
        with contextlib.suppress(Exception):
            self.release()


def output_lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output that is replaced as a whole: beside it, as the output itself is renamed."""
    out = Path(output)
    return out.parent / f".{out.name}{LOCK_NAME}"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str) -> Iterator[list[Path]]:
    """Hold the exclusive lock of ``output`` and remove what killed writers of it left; yield what was removed.

    For commands that write a whole directory through :func:`paint.utils.atomic_path`
    (``paint merge``, ``paint interpolate``): a second writer of the same output is refused at once with one line
    naming the output, instead of both succeeding and one silently replacing the other; and the
    temporaries a killed writer left beside the output (``.paint-tmp.<pid>.<name>.*``, as large
    as the output) are removed once their process is gone (:func:`clean_stale_output_temps`).
    The lock file lies beside the output (the output directory itself is replaced by a rename).
    """
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        output_lock_path(out),
        str(out),
        lambda holder: (
            f"output {out} is being written by another process ({holder}, another {command}); "
            "wait for it to finish, or choose another output"
        ),
    )
    lock.acquire()
    try:
        removed = clean_stale_output_temps(out)
        if removed:
            log.warning("%s: removed %d temporary file(s) left by a killed %s", out, len(removed), command)
        yield removed
    finally:
        lock.release()


def clean_stale_output_temps(output: str | os.PathLike) -> list[Path]:
    """Remove the atomic-write temporaries of ``output`` (beside it) whose creating process is gone.

    :func:`paint.utils.clean_stale_temps` walks a run directory that a run owns; an output lies
    beside other files (a user's models folder), which are not walked: only the entries of its
    parent named as temporaries of this output (``.paint-tmp.<pid>.<name>.*``, see
    :func:`paint.utils.atomic_path`) are looked at, and those of live processes are kept.
    """
    out = Path(output)
    if not out.parent.is_dir():
        return []
    removed = []
    for p in sorted(out.parent.iterdir()):
        pid = temp_owner(p.name)
        if pid is None or not p.name.startswith(f"{TEMP_PREFIX}{pid}.{out.name}.") or pid_alive(pid):
            continue
        removed.append(remove_path(p))
    return removed


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The pid and host recorded in an open lock file, or None if it is empty or unreadable."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").split()
    except OSError:
        return None
    if not text:
        return None
    try:
        return {"pid": int(text[0]), "host": text[1] if len(text) > 1 else "?"}
    except ValueError:
        return {"pid": None, "host": "?"}


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder may still run (a process elsewhere cannot be checked: assume yes)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    return isinstance(pid, int) and pid_alive(pid)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "pid unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}"
