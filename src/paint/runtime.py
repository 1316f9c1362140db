"""CPU threads for torch: one setting for every command (``--threads``, config ``threads:``).

Why it matters: torch's OpenMP workers spin-wait at every parallel region, so when another
process holds a core, each small matmul waits for a descheduled worker. Measured on a 2-core
machine with the shipped model's fine-tuning step (image tower, batch 128; the script is in the
README's "Threads" section):

- idle machine: 1 thread 0.110 s/step, 2 threads 0.069 s/step (2 threads win, 1.6x);
- one other CPU-bound process running: 1 thread 0.35 s/step, 2 threads 1.69 s/step (1 wins, 4.8x).

So ``auto`` uses the cores that are idle now: the usable cores minus the 1-minute load average,
at least 1. A number forces that many threads.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Literal

from paint.errors import PaintError

Threads = int | Literal["auto"]


def usable_cores() -> int:
    """Cores this process may run on (affinity / cgroup cpuset where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def auto_threads(cores: int, load: float | None) -> int:
    """Idle cores: ``cores - load``, where a core more than 30% busy counts as busy; at least 1."""
    if load is None:
        return cores
    return max(1, min(cores, math.floor(cores - load + 0.3)))


MAX_THREADS = 4096  # torch takes a C int; more threads than this is a typo, not a machine


def parse_threads(value: object) -> Threads | None:
    """``auto``, a positive integer, or None (unset); anything else is a one-line error."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "auto":
            return "auto"
        if v.isdigit():
            value = int(v)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_THREADS:
        return value
    raise PaintError(f"threads must be 'auto' or an integer from 1 to {MAX_THREADS}, got {value!r}")


def resolve_threads(value: object) -> tuple[int, str]:
    """The thread count for ``value`` (None means auto) and why, for the start-up line."""
    v = parse_threads(value)
    if v is None or v == "auto":
        cores, load = usable_cores(), load_average()
        n = auto_threads(cores, load)
        why = f"auto: {cores} cores" + (f", load {load:.1f}" if load is not None else "")
        return n, why
    return int(v), "set"


_pending: str | None = None  # the "threads:" line of a deferred announcement


def apply_threads(value: object, stream=None, defer: bool = False) -> int:
    """Set torch's intra-op threads from ``value`` and print ``threads: N (why)`` once on stderr.

    With ``defer`` the line waits for :func:`announce_pending`, which the first progress output
    (or the CLI, when the command ends) calls: a command that stops at a one-line user error
    before any work prints that line alone.
    """
    import torch

    global _pending
    n, why = resolve_threads(value)
    torch.set_num_threads(n)
    line = f"threads: {n} ({why}; choose with --threads N or threads: in the config)"
    _pending = None
    if defer:
        _pending = line
    else:
        print(line, file=stream or sys.stderr, flush=True)
    return n


def announce_pending(stream=None) -> None:
    """Print a deferred ``threads:`` line, once; a no-op when there is none."""
    global _pending
    if _pending is not None:
        line, _pending = _pending, None
        print(line, file=stream or sys.stderr, flush=True)


def drop_pending() -> None:
    """Forget a deferred ``threads:`` line (the command ended in an error before any work)."""
    global _pending
    _pending = None
