"""Decoding many images at once: an ordered map over a pool of threads, with a bounded window.

Preprocessing spends nearly all its time in PIL (JPEG/PNG decode, bicubic resize, RGB
conversion) and in hashing rows, all of which release the GIL, so a pool of threads scales
with the cores: ``benchmarks/bench_data.py`` (5,000 JPEGs of 160-640 px to 224 px, 2 cores)
measured 404 img/s with one thread and 706 with two on an idle machine (1.75x). A fork-based
process pool doing the same work was slower (597 against 634 img/s for threads; it spends more
CPU pickling every decoded row back through a pipe), and threads need nothing to be
picklable: a :class:`~paint.data.task.FileSplit`'s ``opener`` may be a lambda. Small rendered
images are the opposite case (mostly Python, holding the GIL): the synthetic world's 32 px
``shapes`` decoded at 4,559 img/s in one thread and 1,975 in two, so by default the pool is kept
only where it measures faster on a split's first images (:func:`ordered_map`; 4,453 img/s there).

Results come back in input order and at most ``window`` items are in flight, so memory stays
bounded (a few rows per worker, never the whole split) and the caller writes each row where
the one-process loop would: the output is byte-identical whatever the number of workers. An
exception in a worker is raised, unchanged, when its item's turn comes, so the error is the
one the sequential loop would have raised first.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

from paint.errors import PaintError

T = TypeVar("T")

MAX_DEFAULT_WORKERS = 8  # beyond this the disk, not the decoder, is usually the limit
ROWS_IN_FLIGHT_PER_WORKER = 4  # enough to keep every worker busy while the caller writes rows
PROBE_ITEMS = 16  # items timed per thread before an automatic pool decides whether it pays
POOL_MIN_GAIN = 1.1  # an automatic pool is kept if it maps at least this much faster than one thread


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_workers(num_workers: int | None) -> None:
    """Refuse a negative worker count with a message that says what the values mean."""
    if num_workers is not None and num_workers < 0:
        raise PaintError(
            f"num_workers must be a whole number >= 0 (0 or 1: decode in this process; "
            f"unset: one per core, at most {MAX_DEFAULT_WORKERS}, where that is faster), got {num_workers!r}"
        )


def resolve_workers(num_workers: int | None) -> int:
    """How many threads may decode: ``None`` -> the cores (at most 8); 0 and 1 -> 1 (no pool)."""
    check_workers(num_workers)
    if num_workers is None:
        return min(MAX_DEFAULT_WORKERS, available_cores())
    return max(1, int(num_workers))


def pool_pays(one_thread_seconds: float, pool_seconds: float) -> bool:
    """Whether the pool (seconds per item) beat one thread by enough to keep it."""
    return pool_seconds * POOL_MIN_GAIN <= one_thread_seconds


def ordered_map(
    fn: Callable[[int], T], items: Iterable[int], num_workers: int | None, window: int | None = None
) -> Iterator[T]:
    """``fn(i)`` for every ``i`` of ``items``, in order, computed by ``num_workers`` threads.

    With ``num_workers=None`` (automatic) the first items are timed in this thread, the next
    through the pool, and the pool is kept only if it was faster (:func:`pool_pays`): small
    rendered images (the synthetic world's 32 px tasks) are mostly Python holding the GIL, and
    two threads decoded them 2.3x *slower* than one, while photos decode 1.7-1.8x faster.

    Args:
        fn: called from the pool's threads; it must not depend on being called in order.
        items: the indices to map.
        num_workers: see :func:`resolve_workers`; ``None`` decides as above; 2 or more always
            uses that many threads; 0 or 1 runs ``fn`` in this thread.
        window: most items in flight at once (default: 4 per worker); bounds memory.

    Raises:
        The first exception (in input order) that ``fn`` raised; items not yet started are cancelled.
    """
    workers = resolve_workers(num_workers)
    todo = iter(items)
    if workers == 1:
        yield from map(fn, todo)
        return
    one_thread = None
    if num_workers is None:
        one_thread = yield from _timed(fn, todo, PROBE_ITEMS)
        if one_thread is None:  # the items ran out during the probe
            return
    yield from _pooled(fn, todo, workers, window or ROWS_IN_FLIGHT_PER_WORKER * workers, one_thread)
    yield from map(fn, todo)  # what is left when the pool did not pay


def _timed(fn: Callable[[int], T], todo: Iterator[int], n: int) -> Generator[T, None, float | None]:
    """Map the next ``n + 1`` items in this thread; seconds per item, the first one (warm-up) left out."""
    for i in islice(todo, 1):  # first-use costs (plugins, fonts, file cache) would favour the pool
        yield fn(i)
    t0, done = time.perf_counter(), 0
    for i in islice(todo, n):
        yield fn(i)
        done += 1
    return (time.perf_counter() - t0) / n if done == n else None


def _pooled(
    fn: Callable[[int], T], todo: Iterator[int], workers: int, window: int, one_thread: float | None
) -> Iterator[T]:
    """Map ``todo`` through a thread pool in order; with ``one_thread`` (seconds per item in one
    thread) stop taking items after a probe of ``PROBE_ITEMS * workers`` if the pool was not faster."""
    window = max(workers, window)
    probe = PROBE_ITEMS * workers if one_thread is not None else None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="paint-decode")
    pending: deque[Future[T]] = deque()
    t0, done, feeding = time.perf_counter(), 0, True
    try:
        for i in todo:
            pending.append(pool.submit(fn, i))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            done += 1
            if done == probe and not pool_pays(one_thread, (time.perf_counter() - t0) / done):
                feeding = False  # finish what is in flight, leave the rest to this thread
            for i in todo if feeding else ():  # refill one slot before handing the result over
                pending.append(pool.submit(fn, i))
                break
            yield result
    finally:
        # on an error (or a caller that stops early) drop what has not started; wait for what has
        pool.shutdown(wait=True, cancel_futures=True)
