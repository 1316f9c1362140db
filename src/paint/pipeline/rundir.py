"""The run directory: one place for a run's life cycle on disk.

A run (``paint patch``, ``counting``, ``pretrain``, ...) writes everything into one output
directory. :class:`RunDir` owns the rules every run shares:

1. :meth:`RunDir.check` (read only, before any expensive loading): the path is not a file; a
   finished run is not overwritten and an unfinished one is not silently restarted without
   ``--resume``.
2. :meth:`RunDir.start`: create the directory, take an exclusive lock (``.paint.lock``, a
   ``fcntl.flock`` held for the whole run, with the pid and host in it; a lock left by a dead
   process is taken over with a note), and on ``--resume`` compare the stored ``config.yaml``
   with the new resolved config, refusing *before anything is written*; then remove the
   temporaries of atomic writes that a killed run left (:func:`paint.utils.clean_stale_temps`)
   and write the resolved config.
3. :meth:`RunDir.write_summary`: the summary, atomically, last (it marks a finished run).
4. :meth:`RunDir.close`: release the lock.

``with RunDir(out).open(cfg, resume) as run: ...`` does 1, 2 and 4.

A command that writes one whole output directory instead of a run (``paint merge``, ``paint
interpolate``) holds :func:`output_lock` while it writes: the same :class:`FileLock` (beside the
output, which is replaced by a rename) and the removal of the temporaries that a killed writer of
that output left beside it (:func:`clean_stale_output_temps`). Run functions whose body
cannot be re-indented use :func:`run_scope` instead: every RunDir started inside the decorated
call is closed when it returns or raises.

Example::

    @run_scope
    def run_thing(cfg, resume=False):
        run = RunDir(cfg.output_dir).check(resume)
        ...  # load models and data: user errors surface before any output exists
        run.start(cfg, resume)
        ...
        run.write_summary(summary)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from paint.errors import PaintError
from paint.utils import (
    TEMP_PREFIX,
    clean_stale_temps,
    pid_alive,
    remove_path,
    temp_owner,
    write_json_atomic,
    write_yaml_atomic,
)

log = logging.getLogger(__name__)

LOCK_NAME = ".paint.lock"
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
# Fields that may change between a run and its resume without changing any result: where the
# run lives, where caches go, which device evaluates, how many images per evaluation batch, how many
# threads decode images, how many processes load training batches, whether activations are recomputed.
DEFAULT_IGNORED = frozenset(
    {
        "output_dir",
        "cache_dir",
        "device",
        "eval_batch_size",
        "num_workers",
        "finetune.loader_workers",
        "finetune.gradient_checkpointing",
    }
)

F = TypeVar("F", bound=Callable[..., Any])
_scopes = threading.local()


def config_mapping(config: Any) -> dict[str, Any]:
    """The resolved config as stored in ``config.yaml`` (a pydantic model or a mapping), YAML round-tripped."""
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) or {}


def config_differences(old: Any, new: Any, ignore: Iterable[str] = (), prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) for every field that differs, ignoring the dotted names in ``ignore``."""
    ignored = set(ignore)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            if f"{prefix}{key}" not in ignored:
                out += config_differences(old.get(key, _ABSENT), new.get(key, _ABSENT), ignored, f"{prefix}{key}.")
        return out
    if old != new:
        return [(prefix.rstrip(".") or "(top level)", _shown(old), _shown(new))]
    return []


_ABSENT = object()


def _shown(value: Any) -> Any:
    return "(absent)" if value is _ABSENT else value


def is_main_rank() -> bool:
    """Whether this process is rank 0 of a distributed launch (or not distributed at all)."""
    return os.environ.get("RANK", "0") == "0"


def run_scope(fn: F) -> F:
    """Close every :class:`RunDir` started during a call of ``fn``, however the call ends.

    The lock of a run must be released when the run function returns or raises (an
    in-process retry with ``--resume`` must find it free), without wrapping the function's
    whole body in a ``with`` block.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack = _scope_stack()
        stack.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for run in reversed(stack.pop()):
                run.close()

    return wrapper  # type: ignore[return-value]


def _scope_stack() -> list[list[RunDir]]:
    if not hasattr(_scopes, "stack"):
        _scopes.stack = []
    return _scopes.stack


class RunDir:
    """A run's output directory: checks, lock, config, stale-temporary cleanup, summary."""

    def __init__(self, path: str | os.PathLike, finished_marker: str = SUMMARY_NAME):
        """Args:
        path: the output directory.
        finished_marker: the file whose presence means the run finished (written last).
        """
        self.path = Path(path)
        self.finished_marker = finished_marker
        self._lock: FileLock | None = None
        self.took_over: dict[str, Any] | None = None
        self.removed_temps: list[Path] = []

    # ------------------------------------------------------------------ checks (read only)

    def check(self, resume: bool) -> RunDir:
        """Refuse a path that is a file, a finished run without ``resume``, an unfinished one without it.

        Writes nothing, so it can run first, before models and data are loaded.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise PaintError(f"output_dir {out} is an existing file, not a directory; choose a directory path")
        if not out.exists() or not any(p.name != LOCK_NAME for p in out.iterdir()):
            return self
        if resume:
            return self
        if (out / self.finished_marker).exists():
            raise PaintError(
                f"{out} already holds a finished run; choose a new output_dir (or pass --resume to redo its reports)"
            )
        raise PaintError(f"{out} holds an unfinished run; pass --resume to continue it, or choose a new output_dir")

    def check_config(self, config: Any, ignore: Iterable[str] = DEFAULT_IGNORED) -> None:
        """Refuse a resume whose resolved config differs from the stored one in a field that matters."""
        stored_path = self.path / CONFIG_NAME
        if not stored_path.is_file():
            return  # killed before the config was written: nothing to compare with
        try:
            stored = yaml.safe_load(stored_path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
            raise PaintError(
                f"cannot read {stored_path} to compare configs ({type(e).__name__}); use a new output_dir"
            ) from None
        diffs = config_differences(stored, config_mapping(config), ignore)
        if diffs:
            field, old, new = diffs[0]
            more = f" (and {len(diffs) - 1} more fields)" if len(diffs) > 1 else ""
            raise PaintError(
                f"cannot resume {self.path}: it was made with a different config ({field}: {old!r} there, {new!r} now{more}); "
                "resume with its config.yaml, or choose a new output_dir for a new run"
            )

    # ------------------------------------------------------------------ life cycle

    def start(self, config: Any, resume: bool, ignore: Iterable[str] = DEFAULT_IGNORED) -> RunDir:
        """Check, lock, compare configs on resume, clean stale temporaries, write ``config.yaml``.

        Every refusal happens before the config (or anything else of the run) is written. The
        lock is held until :meth:`close` (or the end of the enclosing :func:`run_scope` call, or
        of the process).
        """
        self.check(resume)
        if not is_main_rank():
            # Under ``accelerate launch`` every rank runs the same function; rank 0 alone owns the
            # directory (lock, cleanup, config). The others only refuse what rank 0 would refuse.
            if resume:
                self.check_config(config, ignore)
            return self
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.lock()
            if resume:
                self.check_config(config, ignore)
        except BaseException:
            self.close()
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # leave no trace of a refused run
            raise
        stack = _scope_stack()
        if stack:
            stack[-1].append(self)
        self.removed_temps = clean_stale_temps(self.path)
        if self.removed_temps:
            log.warning("%s: removed %d temporary file(s) left by a killed run", self.path, len(self.removed_temps))
        write_yaml_atomic(self.path / CONFIG_NAME, config_mapping(config))
        return self

    @contextlib.contextmanager
    def open(self, config: Any, resume: bool, ignore: Iterable[str] = DEFAULT_IGNORED) -> Iterator[RunDir]:
        """``start`` as a context manager: the lock is released when the block ends."""
        self.start(config, resume, ignore)
        try:
            yield self
        finally:
            self.close()

    def write_summary(self, summary: Any, name: str | None = None) -> Path:
        """Write the summary JSON atomically; call it last, as its presence marks a finished run."""
        path = self.path / (name or self.finished_marker)
        write_json_atomic(path, summary)
        return path

    # ------------------------------------------------------------------ the lock

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def locked(self) -> bool:
        return self._lock is not None and self._lock.held

    def lock(self) -> None:
        """Take the exclusive lock of the directory, or refuse with one line naming its holder (see :class:`FileLock`)."""
        if self.locked:
            return
        self._lock = FileLock(
            self.lock_path,
            str(self.path),
            lambda holder: (
                f"{self.path} is in use by another paint run ({holder}); "
                "wait for it to finish, or choose another output_dir"
            ),
        )
        self._lock.acquire()
        self.took_over = self._lock.took_over

    def close(self) -> None:
        """Release the lock (and remove the lock file); a second call does nothing."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __del__(self) -> None:  # a forgotten close must not keep the directory locked forever
        with contextlib.suppress(Exception):
            self.close()


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
        import fcntl

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
