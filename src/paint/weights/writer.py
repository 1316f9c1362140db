"""Streamed, sharded safetensors writing (the HF layout with an index file), atomically.

The writer knows every output tensor's name, shape and dtype up front (a merge's output has
the base's layout), so it writes each shard's header first and then streams each tensor's
bytes to disk as soon as it is computed: peak memory is one output tensor, not one shard.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from paint.errors import PaintError
from paint.utils import atomic_path
from paint.weights.backlog import Backlog
from paint.weights.io import _TORCH_TO_ST, DEFAULT_SHARD_BYTES, SAFE_INDEX, SAFE_WEIGHTS, TensorInfo

WRITE_BEHIND_BYTES = 8 * 1024**2  # chunks queued for the writing thread at most


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"500MB"``, ``"2GB"``, ``"1.5GiB"``."""
    if isinstance(size, int):
        value = size
    else:
        s = str(size).strip().upper().replace(" ", "")
        units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
        for unit, mult in units.items():
            if s.endswith(unit):
                try:
                    value = int(float(s[: -len(unit)]) * mult)
                except ValueError:
                    raise PaintError(f"size {size!r} is not a number of bytes like 500MB or 2GB") from None
                break
        else:
            try:
                value = int(s)
            except ValueError:
                raise PaintError(f"size {size!r} is not a number of bytes like 500MB or 2GB") from None
    if value <= 0:
        raise PaintError(f"size {size!r} must be positive")
    return value


def plan_shards(infos: Mapping[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Split keys, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, info in infos.items():
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += info.nbytes
    return shards if shards[0] else []


def shard_names(n: int) -> list[str]:
    """HF file names for ``n`` shards."""
    if n <= 1:
        return [SAFE_WEIGHTS]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _header_bytes(keys: Sequence[str], infos: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for k in keys:
        info = infos[k]
        if info.dtype not in _TORCH_TO_ST:
            raise PaintError(f"tensor {k!r} has dtype {info.dtype}, which safetensors cannot store")
        header[k] = {
            "dtype": _TORCH_TO_ST[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so that data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def all_finite_fast(t: torch.Tensor) -> bool:
    """True when every entry of a floating-point tensor is finite, from one sum (False: look closer).

    A sum that meets a NaN or an infinity is NaN or infinite (IEEE addition never turns them
    finite), so a finite sum proves every entry finite; a non-finite one may also be an overflow
    of finite entries, which :func:`check_finite` then tells apart exactly. One reduction reads the
    tensor once and allocates nothing, where ``isfinite(t).all()`` makes several tensor-sized
    temporaries (it cost more than the merge's own maths).
    """
    acc = torch.float32 if t.dtype.itemsize < 4 else t.dtype  # half precision would overflow at 65504
    return bool(torch.isfinite(t.sum(dtype=acc)))


def check_finite(key: str, t: torch.Tensor) -> None:
    """Refuse, in one line naming the tensor, a floating-point tensor that holds NaN or infinite values.

    Every checkpoint writer here calls it on each tensor (or row chunk) before writing it: weights
    that a NaN coefficient or a diverged run turned non-finite must not reach disk as a model.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return
    work = t if t.dtype.itemsize > 1 else t.float()  # torch has no isfinite (nor sum) for e4m3
    if all_finite_fast(work):
        return
    finite = torch.isfinite(work)
    if not bool(finite.all()):
        bad = int(finite.numel() - int(finite.sum()))
        raise PaintError(f"refusing to write tensor {key!r}: it holds {bad} NaN or infinite values")


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without copying a contiguous one."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class ShardedWriter:
    """Write a known set of tensors, in order, to safetensors shards plus an index file.

    Each shard's header is written when the shard is opened (the layout is known up front),
    then tensor bytes are appended as they come, so nothing is buffered beyond the tensor
    (or row chunks) being written. The bytes are written on a thread of their own, in order,
    while the caller computes the next chunk: :meth:`write` returns once a chunk is queued (at
    most ``behind`` bytes wait), so a chunk must not be changed in place after it is handed
    over; :meth:`close` waits for the last byte, and a failed write (a full disk) is raised by
    the next :meth:`write` or by :meth:`close`. A chunk holding NaN or inf is refused by
    :meth:`write` itself, before any of its bytes are queued (:func:`check_finite`). Use it on
    a temporary directory and move that into place (see :func:`paint.utils.atomic_path`), and
    call :meth:`abort` when anything fails; :func:`save_state_dict` does both.

    Args:
        out_dir: existing directory to write into.
        infos: every tensor to be written, in write order.
        max_shard_bytes: shard size limit (a single larger tensor gets a shard of its own).
        metadata: extra string metadata for each shard header.
        single_file: write exactly this path instead of HF-named shards in ``out_dir``.
        behind: bytes of chunks that may wait for the writing thread (see :mod:`paint.weights.backlog`).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        infos: Mapping[str, TensorInfo],
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: Mapping[str, str] | None = None,
        single_file: str | os.PathLike | None = None,
        behind: int = WRITE_BEHIND_BYTES,
    ):
        self.out_dir = Path(out_dir)
        self.infos = dict(infos)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = [list(self.infos)] if single_file is not None else plan_shards(self.infos, max_shard_bytes)
        if single_file is not None:
            self.paths = [Path(single_file)]
        else:
            self.paths = [self.out_dir / n for n in shard_names(len(self.shards))]
        self._order = [k for shard in self.shards for k in shard]
        self._shard_keys = [set(shard) for shard in self.shards]
        self._next = 0
        self._shard = -1
        self._file: Any = None  # touched by the writing thread only
        self._backlog = Backlog("paint-write", behind)

    def _open_shard(self, i: int) -> None:
        self._shard = i
        self._backlog.submit(self._start_file, i)

    def _start_file(self, i: int) -> None:
        """On the writing thread: close the previous shard, open shard ``i`` and write its header."""
        self._close_file()
        self._file = open(self.paths[i], "wb")
        self._file.write(_header_bytes(self.shards[i], self.infos, self.metadata))

    def _write_bytes(self, buf: memoryview) -> None:
        self._file.write(buf)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, key: str, data: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Write tensor ``key`` (the next in order) from one tensor or consecutive row chunks."""
        if self._next >= len(self._order) or self._order[self._next] != key:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise ValueError(f"writer expected tensor {expected!r} next, got {key!r}")
        info = self.infos[key]
        while self._shard < 0 or key not in self._shard_keys[self._shard]:
            self._open_shard(self._shard + 1)  # shards are filled in order
        chunks = [data] if isinstance(data, torch.Tensor) else data
        written = 0
        for chunk in chunks:
            if chunk.dtype != info.dtype:
                raise ValueError(f"tensor {key!r}: got dtype {chunk.dtype}, planned {info.dtype}")
            if isinstance(data, torch.Tensor) and tuple(chunk.shape) != info.shape:
                raise ValueError(f"tensor {key!r}: got shape {tuple(chunk.shape)}, planned {info.shape}")
            check_finite(key, chunk)  # here, so that the error comes from this call and nothing of it is written
            buf = _tensor_bytes(chunk)
            self._backlog.submit(self._write_bytes, buf, nbytes=buf.nbytes)
            written += buf.nbytes
        if written != info.nbytes:
            raise ValueError(f"tensor {key!r}: wrote {written} bytes, planned {info.nbytes}")
        self._next += 1

    def close(self) -> list[Path]:
        """Finish the last shard and write the index (when sharded); return the files written."""
        if self._next != len(self._order):
            self.abort()
            raise ValueError(f"writer closed after {self._next} of {len(self._order)} tensors")
        while self._shard + 1 < len(self.shards):  # shards never written to (an empty state dict)
            self._open_shard(self._shard + 1)
        try:
            self._backlog.wait()
        except BaseException:
            self.abort()
            raise
        self._backlog.close()
        self._close_file()  # the writing thread has ended: every byte is in the file
        if not self.shards:  # an empty state dict still gets a valid (empty) file
            self.paths[0].write_bytes(_header_bytes([], {}, self.metadata))
        files = list(self.paths)
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(i.nbytes for i in self.infos.values())},
                "weight_map": {k: self.paths[i].name for i, s in enumerate(self.shards) for k in s},
            }
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            files.append(self.out_dir / SAFE_INDEX)
        return files

    def abort(self) -> None:
        """Stop: drop the writes not yet done and close the open shard (the caller removes the files)."""
        self._backlog.close()
        self._close_file()


def write_state_dict_into(
    sd: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[Path]:
    """Write ``sd`` as HF safetensors shards into an existing directory (not atomic by itself)."""
    writer = ShardedWriter(out_dir, {k: TensorInfo.of(v) for k, v in sd.items()}, max_shard_bytes)
    return write_all(writer, sd)


def write_all(writer: ShardedWriter, tensors: Mapping[str, torch.Tensor]) -> list[Path]:
    """Write every tensor in order and close the writer (aborting it on any error); return its files."""
    try:
        for k, v in tensors.items():
            writer.write(k, v)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def save_state_dict(
    sd: Mapping[str, torch.Tensor], path: str | os.PathLike, max_shard_bytes: int | str = DEFAULT_SHARD_BYTES
) -> Path:
    """Save a state dict atomically: a ``.safetensors`` path gets one file, any other path an HF directory.

    A directory holds ``model.safetensors``, or shards of at most ``max_shard_bytes`` plus
    ``model.safetensors.index.json``; other files already in it are replaced with it.
    """
    target = Path(path)
    limit = parse_size(max_shard_bytes)
    with atomic_path(target) as tmp:
        if target.suffix == ".safetensors":
            write_all(ShardedWriter(tmp.parent, {k: TensorInfo.of(v) for k, v in sd.items()}, single_file=tmp), sd)
        else:
            tmp.mkdir()
            write_state_dict_into(sd, tmp, limit)
    return target


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (0o644 under the usual 022).

    Read from ``/proc`` where it can be: setting the umask to find it would briefly change it for
    every thread of the process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_safetensors_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` with the mode other outputs get (not atomic by itself).

    A tensor holding NaN or inf is refused before anything is written (:func:`check_finite`).

    safetensors (0.8) creates its file with mode 0600 whatever the umask, so a model or cache
    written with it could not be read by the group that reads every other output.
    """
    from safetensors.torch import save_file

    for key, t in tensors.items():
        check_finite(key, t)
    out = Path(path)
    save_file(dict(tensors), str(out), metadata=dict(metadata) if metadata else None)
    os.chmod(out, new_file_mode())
    return out
