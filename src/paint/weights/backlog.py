"""Work handed to one background thread, in order, with a bound on the bytes waiting for it.

A streamed merge has three kinds of work that need no answer from the merge's own thread:
hashing the bytes it read (one running sha256 per input file) and writing the bytes it
computed. Each runs on a :class:`Backlog` of its own, so reading, merging, hashing and
writing overlap on the cores a machine has (hashlib, ``os.write`` and torch release the
GIL). The buffers queued keep their tensors alive, so the merge waits once more than
``limit`` bytes are queued: memory stays a few chunks, whatever the speed of each thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Backlog:
    """Jobs run in submission order on one thread; :meth:`submit` waits while more than ``limit`` bytes are queued.

    After a job fails the later ones are skipped, and the first error is raised by the next
    :meth:`submit` or :meth:`wait`.

    Args:
        name: the thread's name prefix (it shows in profilers and tracebacks).
        limit: bytes that may be queued before :meth:`submit` waits for the oldest job.
    """

    def __init__(self, name: str, limit: int):
        self.limit = limit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: deque[tuple[Future[Any], int]] = deque()
        self._bytes = 0
        self._failed = False

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._failed:  # an earlier job failed: what follows it must not happen
            return None
        try:
            return fn(*args)
        except BaseException:
            self._failed = True
            raise

    def submit(self, fn: Callable[..., Any], *args: Any, nbytes: int = 0) -> None:
        """Queue ``fn(*args)``, which holds ``nbytes`` of buffers until it has run."""
        self._queue.append((self._pool.submit(self._run, fn, args), nbytes))
        self._bytes += nbytes
        while self._bytes > self.limit:
            self._pop()

    def _pop(self) -> None:
        done, n = self._queue.popleft()
        self._bytes -= n
        done.result()

    def wait(self) -> None:
        """Wait for every queued job; raise the first error."""
        while self._queue:
            self._pop()

    def close(self) -> None:
        """Drop the jobs not yet started, wait for the running one, and end the thread (errors are not raised)."""
        self._failed = True
        for done, _ in self._queue:
            done.cancel()
        self._queue.clear()
        self._bytes = 0
        self._pool.shutdown(wait=True)
