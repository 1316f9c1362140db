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
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from paint.errors import PaintError
from paint.pipeline.locks import LOCK_NAME, FileLock
from paint.utils import (
    clean_stale_temps,
    write_json_atomic,
    write_yaml_atomic,
)

log = logging.getLogger(__name__)

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
