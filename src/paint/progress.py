"""One progress helper for every long phase: a tqdm bar on a terminal, periodic lines in a log.

tqdm redraws its bar with carriage returns; when stderr is a file or a pipe (CI, ``nohup``,
``tee``) every redraw lands in the log as one more line fragment (about 50 KB for a demo run).
:func:`progress` therefore returns a tqdm bar only when the stream is a terminal, and otherwise
a :class:`LineProgress` that writes one plain line every ``interval`` seconds and one at the end
of a phase that lasted long enough to be worth recording. Both expose the parts of tqdm's API the
project uses: iteration, ``update``, ``set_postfix``, ``close`` and use as a context manager.

``PAINT_PROGRESS_INTERVAL`` (seconds, default 10) sets the line period; ``PAINT_PROGRESS=0``
silences both forms.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from paint.runtime import announce_pending

T = TypeVar("T")
DEFAULT_INTERVAL = 10.0
# A phase shorter than this leaves no end line in a log: only long phases are worth a record.
MIN_END_SECONDS = 2.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("PAINT_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _silenced() -> bool:
    return os.environ.get("PAINT_PROGRESS", "1").strip().lower() in ("0", "false", "no", "off")


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar is readable)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams (pytest's capture) are not terminals
        return False


def _in_notebook() -> bool:
    """A Jupyter kernel: stderr is no terminal there, but tqdm.auto draws a widget, not carriage returns."""
    return "ipykernel" in sys.modules


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}min"


class LineProgress:
    """A progress counter that writes whole lines (no ``\\r``) at most every ``interval`` seconds.

    Args:
        iterable: optional iterable to wrap (its ``len`` gives ``total`` when not given).
        desc: what the phase does, the start of every line.
        total: expected number of steps (None: unknown).
        initial: steps already done (resumed runs).
        unit: the step's name in the lines.
        leave: write an end line for a phase that lasted at least ``MIN_END_SECONDS``.
        interval: seconds between lines (default ``PAINT_PROGRESS_INTERVAL`` or 10).
        file: the stream (default stderr at call time).
        disable: write nothing.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str = "",
        total: int | None = None,
        initial: int = 0,
        unit: str = "it",
        leave: bool = True,
        interval: float | None = None,
        file: IO[str] | None = None,
        disable: bool = False,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.desc, self.total, self.n, self.unit, self.leave = desc, total, initial, unit, leave
        self.interval = _interval() if interval is None else interval
        self.file = file if file is not None else sys.stderr
        self.disable = disable
        self.postfix = ""
        self.start = self._last = time.monotonic()
        self.lines = 0
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable is updated with update(), not iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except BaseException:
            self.close(stopped=True)
            raise
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(stopped=exc_type is not None)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total and self.n >= self.total:
            return  # the last step: the end line says it ("done: 11/11"), not a periodic one before it
        if now - self._last >= self.interval:
            self._last = now
            self._write(self._line(now))

    def _line(self, now: float, end: bool | str = False) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = now - self.start
        eta = ""
        if end is False and self.total and 0 < self.n < self.total:
            eta = f", about {_fmt_seconds(elapsed / self.n * (self.total - self.n))} left"
        post = f", {self.postfix}" if self.postfix else ""
        verb = {True: "done: ", False: "", "stopped": "stopped at "}[end]
        return f"{self.desc}: {verb}{done} {self.unit}{pct} in {_fmt_seconds(elapsed)}{eta}{post}"

    def _write(self, line: str) -> None:
        if self.disable:
            return
        self.lines += 1
        print(line, file=self.file, flush=True)

    def close(self, stopped: bool = False) -> None:
        """End the phase: one end line (``done:``, or ``stopped at`` when an error or Ctrl-C ends it), unless
        the phase was too short to record."""
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if stopped:
            if self.lines or now - self.start >= MIN_END_SECONDS:
                self._write(self._line(now, end="stopped"))
            return
        if self.lines or (self.leave and now - self.start >= MIN_END_SECONDS):
            self._write(self._line(now, end=True))


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: int | None = None,
    initial: int = 0,
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
    file: IO[str] | None = None,
    interval: float | None = None,
) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`LineProgress`.

    Use it as tqdm: ``for x in progress(xs, desc="alpha sweep"): ...`` or
    ``bar = progress(total=n, desc="fine-tune"); bar.update(1); bar.close()``.
    """
    stream = file if file is not None else sys.stderr
    disable = disable or _silenced()
    if not disable:
        announce_pending()
    common = dict(desc=desc, total=total, initial=initial, unit=unit, leave=leave, disable=disable, file=stream)
    if is_terminal(stream) or (file is None and _in_notebook()):
        from tqdm.auto import tqdm  # a notebook gets tqdm's widget

        return tqdm(iterable, dynamic_ncols=True, **common)
    return LineProgress(iterable, interval=interval, **common)


@contextmanager
def phase(desc: str, file: IO[str] | None = None) -> Iterator[None]:
    """Announce a step that has no natural counter (one line before; one after when it took a while)."""
    stream = file if file is not None else sys.stderr
    if _silenced():
        yield
        return
    announce_pending()
    start = time.monotonic()
    print(f"{desc} ...", file=stream, flush=True)
    yield
    took = time.monotonic() - start
    if took >= MIN_END_SECONDS:
        print(f"{desc}: done in {_fmt_seconds(took)}", file=stream, flush=True)


@contextmanager
def counter(desc: str, unit: str = "eval", total: int | None = None) -> Iterator[Any]:
    """A progress object for work counted as it happens (a search's model evaluations), closed on exit."""
    bar = progress(desc=desc, total=total, unit=unit)
    try:
        yield bar
    except BaseException:
        if isinstance(bar, LineProgress):
            bar.close(stopped=True)  # "stopped at 6/21", not "done: 6/21"
        else:
            bar.close()
        raise
    bar.close()


def ticking(fn: Callable[..., T], bar: Any) -> Callable[..., T]:
    """``fn`` that advances ``bar`` by one after every call (e.g. a search's ``measure``)."""

    def wrapped(*args: Any, **kwargs: Any) -> T:
        out = fn(*args, **kwargs)
        bar.update(1)
        return out

    return wrapped
