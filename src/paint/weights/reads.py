"""Reading merge inputs tensor by tensor with plain file reads, hashing each file from the same bytes.

A merge reads every input file once, front to back (tensors are merged in the base's file
order), so the sha256 recorded in the model card can be computed from the bytes the merge
reads anyway instead of reading every file a second time. Each distinct file (the base
listed again as a model is one file) keeps a position up to which it is hashed; a read that
starts there extends the hash, and at the end whatever was not read in order (out-of-order
layouts, skipped bytes) is hashed from that position on. Each file is hashed on a thread of
its own (:class:`paint.weights.backlog.Backlog`; hashlib releases the GIL), so the files hash in
parallel with each other and with the merge's own work: sha256 runs at about 1.7 GB/s a
core, and three 1.7 GB inputs are 3 s of it, as long as the rest of the merge.

Reading with ``os.preadv`` into a fresh tensor keeps the file's pages out of the process's
resident memory. (Memory maps of each chunk were tried: they save the copy, but every unmap
interrupts the writing thread, whose page-cache writes then cost two to three times the CPU;
the copy is the cheaper of the two.) A file modified while it is merged would give a merge of
two versions and a hash of neither file: :meth:`InputReads.check_unchanged` refuses it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from paint.errors import PaintError
from paint.weights.backlog import Backlog
from paint.weights.io import CheckpointReader, file_sha256, safetensors_spans

_MAX_PENDING_BYTES = 8 * 1024**2  # buffers held for a file's hashing thread at most
_MAX_WHOLE_THREADS = 4  # files the merge never reads, hashed at once
_BLOCK = 4 * 1024**2


def _file_sha256(path: Path) -> str:
    """sha256 of a file read into one reused buffer (no per-block allocation on the hashing thread)."""
    h, buf = hashlib.sha256(), bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class _File:
    """One input file: an open descriptor, where its tensors lie, and its running hash."""

    def __init__(self, path: Path, hashing: bool):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.data_start, self.spans = safetensors_spans(path)
        self.identity = file_identity(self.fd)
        self.size = os.fstat(self.fd).st_size
        self.sha = hashlib.sha256() if hashing else None
        self.backlog = Backlog("paint-sha256", _MAX_PENDING_BYTES) if hashing else None
        self.hashed = 0  # bytes [0, hashed) are in the hash (or queued for it)

    def pread_into(self, buf: memoryview, offset: int) -> None:
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], offset + done)
            if n <= 0:
                raise PaintError(f"{self.path} is truncated: reading {len(buf)} bytes at offset {offset} hit its end")
            done += n


def file_identity(fd: int) -> tuple[int, int, int, int]:
    """What changes when a file's content is replaced or rewritten: device, inode, size, mtime (ns)."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class InputReads:
    """Row reads of every merge input (``readers[0]`` the base), with sha256 of each distinct file.

    Args:
        readers: the opened inputs.
        hashing: compute the sha256 of every input file.
        unread: inputs whose tensors the merge never reads (the base of a linear merge): their
            files are hashed whole on a second thread while the merge runs.
        known: resolved path -> sha256 of files already hashed (:mod:`paint.weights.hashcache`):
            not hashed again, returned by :meth:`digests` as given.
    """

    def __init__(
        self,
        readers: Sequence[CheckpointReader],
        hashing: bool = False,
        unread: Sequence[int] = (),
        known: Mapping[Path, str] | None = None,
    ):
        self.readers = list(readers)
        self.hashing = hashing
        self.unread = set(unread)
        self.known = dict(known or {}) if hashing else {}
        self._files: dict[Path, _File] = {}
        self._whole: dict[Path, Future[str]] = {}  # files nobody reads, hashed on threads of their own from the start
        self._where: list[dict[str, _File]] = []  # per input: key -> the file holding it (safetensors only)
        for r in self.readers:
            where: dict[str, _File] = {}
            for path in (p.resolve() for p in r.files if p.suffix == ".safetensors"):
                if path not in self._files:
                    self._files[path] = _File(path, hashing and path not in self.known)
                where.update(dict.fromkeys(self._files[path].spans, self._files[path]))
            self._where.append(where)

    def read(self, i: int, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Tensor ``key`` of input ``i``, or its rows ``start:stop`` along dim 0."""
        f = self._where[i].get(key)
        if f is None:  # a legacy file, already in memory
            reader = self.readers[i]
            return reader.get(key) if start is None else reader.get_rows(key, start, stop)
        info = self.readers[i].infos[key]
        begin, _ = f.spans[key]
        shape = list(info.shape)
        if start is not None:
            row_bytes = info.nbytes // info.shape[0]
            begin += start * row_bytes
            shape[0] = stop - start
        out = torch.empty(shape, dtype=info.dtype)
        if out.numel():
            buf = memoryview(out.reshape(-1).view(torch.uint8).numpy())
            f.pread_into(buf, begin)
            self._hash(f, buf, begin)
        return out

    def _hash(self, f: _File, buf: memoryview, begin: int) -> None:
        """Extend the file's hash with ``buf`` (at ``begin``) when it continues what is hashed."""
        if f.backlog is None or f.sha is None or not begin <= f.hashed < begin + len(buf):
            return
        part = buf[f.hashed - begin :]
        f.backlog.submit(f.sha.update, part, nbytes=len(part))
        f.hashed += len(part)

    def start(self) -> None:
        """Hash every file's header, and start hashing the unread files (call before the first read)."""
        read = {p.resolve() for i, r in enumerate(self.readers) if i not in self.unread for p in r.files}
        unread = {p.resolve() for i in self.unread for p in self.readers[i].files} - read - set(self.known)
        if self.hashing and unread:
            workers = min(_MAX_WHOLE_THREADS, len(unread))
            background = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="paint-sha256-whole")
            self._whole = {p: background.submit(_file_sha256, p) for p in sorted(unread)}
            background.shutdown(wait=False)  # runs the queued hashes, then its thread ends
        for path, f in self._files.items():
            if f.sha is not None and f.hashed == 0 and path not in self._whole:
                header = bytearray(f.data_start)
                f.pread_into(memoryview(header), 0)
                f.sha.update(header)
                f.hashed = f.data_start

    def digests(self) -> dict[Path, str]:
        """sha256 of every input file (resolved path -> hex), hashing what the reads did not cover.

        Legacy ``.bin`` / ``.pt`` files (read whole when opened) are hashed here in one go.
        """
        if not self.hashing:
            return {}
        out: dict[Path, str] = dict(self.known)
        for path, f in self._files.items():
            if f.sha is None or path in self._whole:
                continue
            assert f.backlog is not None
            f.backlog.wait()
            block = memoryview(bytearray(_BLOCK))
            while f.hashed < f.size:
                part = block[: min(_BLOCK, f.size - f.hashed)]
                f.pread_into(part, f.hashed)
                f.sha.update(part)
                f.hashed += len(part)
            out[path] = f.sha.hexdigest()
        out.update({p: h.result() for p, h in self._whole.items()})
        for r in self.readers:
            for path in (p.resolve() for p in r.files):
                if path not in out:
                    out[path] = file_sha256(path)
        return out

    def check_unchanged(self) -> None:
        """Raise :class:`PaintError` when an input file was modified or replaced since it was opened."""
        for path, f in self._files.items():
            if file_identity(f.fd) != f.identity or os.stat(path).st_ino != f.identity[1]:
                raise PaintError(f"{path} changed while it was being merged; merge again once nothing writes to it")

    def close(self) -> None:
        for h in self._whole.values():
            h.cancel()
        for f in self._files.values():
            if f.backlog is not None:
                f.backlog.close()
            os.close(f.fd)
        self._files = {}
