"""The streamed merge engine: one tensor at a time from every input, straight to sharded output.

For each key of the base checkpoint, read that tensor from the base and from every model,
apply the merge method, and hand the result to :class:`paint.weights.writer.ShardedWriter`.
Integer and boolean tensors, and keys not selected by ``include``, are copied from the
base. Tensors larger than ``chunk_bytes`` are processed in row chunks by every method: a
method that needs a whole-tensor statistic (TIES threshold, DARE norm, Model Stock angle)
first makes a pass over the chunks, one model at a time (see :mod:`paint.weights.methods`),
so even a 150 MB embedding never needs a full-size temporary (a tensor of up to
:data:`HELD_BYTES` is read once and sliced for every pass). The SVD methods (Iso-C, Iso-CTS,
TSV-M: ``MergeMethod.whole_tensor``) need the whole matrix and take every merged tensor whole:
one tensor's worth per input, never a whole checkpoint.

A merge is bound by reading its inputs and writing its output, so the work is spread over
threads that overlap: the merge's own thread reads (:mod:`paint.weights.reads`) and computes,
each input file is hashed on a thread of its own, and the output is written on another
(:class:`paint.weights.writer.ShardedWriter`), each with a few chunks queued at most, so memory
stays a few chunks per input.

:func:`merge_state_dicts` is the in-memory twin for state dicts already loaded; it runs the
same per-key code (:func:`merge_key`), so its result is bit-identical to the streamed one.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from paint.errors import PaintError
from paint.progress import progress as tqdm
from paint.utils import atomic_path
from paint.weights.chunks import single
from paint.weights.heap import kept_heap
from paint.weights.io import DEFAULT_SHARD_BYTES, CheckpointReader, LazyStateDict, TensorInfo, check_safetensors_size
from paint.weights.methods import MergeMethod, check_weights, get_method
from paint.weights.ops import check_compatible
from paint.weights.reads import InputReads
from paint.weights.writer import ShardedWriter

DEFAULT_CHUNK_BYTES = 4 * 1024**2
HELD_BYTES = 16 * 1024**2  # a method's first pass reads an input's tensor of up to this size once, not per pass

# read(source index, key, start row, stop row); rows None means the whole tensor.
RowReader = Callable[[int, str, "int | None", "int | None"], torch.Tensor]


@dataclass(frozen=True)
class MergeStats:
    """What a streamed merge did."""

    tensors: int
    merged: int
    copied: int
    bytes: int
    files: list[str]
    seconds: float
    sha256: dict[str, str] = field(default_factory=dict)  # input file -> hash (when asked for)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tensors": self.tensors,
            "merged": self.merged,
            "copied": self.copied,
            "bytes": self.bytes,
            "files": self.files,
            "seconds": round(self.seconds, 3),
        }


def key_selector(include: Sequence[str] | None) -> Callable[[str], bool]:
    """A predicate true for keys matching any of the fnmatch patterns (all keys when None)."""
    if include is None:
        return lambda key: True
    patterns = list(include)
    return lambda key: any(fnmatch.fnmatchcase(key, p) for p in patterns)


def resolve(
    method: str | MergeMethod, n_models: int, weights: Sequence[float] | None, params: Any
) -> tuple[MergeMethod, list[float], Any]:
    """Method entry, one weight per model (default 1) and validated parameters."""
    m = get_method(method) if isinstance(method, str) else method
    w = [1.0] * n_models if weights is None else [float(x) for x in weights]
    if len(w) != n_models:
        raise PaintError(f"{n_models} models but {len(w)} weights")
    check_weights(m, w)
    p = params if isinstance(params, m.params) else m.parse_params(params)
    return m, w, p


def row_ranges(info: TensorInfo, chunk_bytes: int) -> list[tuple[int, int]] | None:
    """Row chunks along dim 0 of at most ``chunk_bytes`` each, or None to take the tensor whole."""
    if len(info.shape) == 0 or info.nbytes <= chunk_bytes or info.shape[0] < 2:
        return None
    row_bytes = info.nbytes // info.shape[0]
    rows = max(1, chunk_bytes // max(1, row_bytes))
    return [(a, min(a + rows, info.shape[0])) for a in range(0, info.shape[0], rows)]


def merge_key(
    key: str,
    info: TensorInfo,
    read: RowReader,
    n_models: int,
    method: MergeMethod,
    weights: Sequence[float],
    params: Any,
    selected: bool,
    chunk_bytes: int,
    held_bytes: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the merged tensor ``key`` as consecutive row chunks (one chunk when small).

    Source 0 is the base, sources 1..n_models the models. A method with a ``prepare`` pass
    reads each input's tensor once when it is at most ``held_bytes`` (default
    :data:`HELD_BYTES`) and hands its chunks out as slices of it, and re-reads the chunks of a
    larger one; a tensor taken whole is read once. A ``whole_tensor`` method takes every
    tensor it merges whole (tensors copied from the base still stream).
    """
    ranges = row_ranges(info, chunk_bytes)
    if not (selected and info.dtype.is_floating_point):
        for start, stop in ranges or [(None, None)]:
            yield read(0, key, start, stop)
        return
    if method.whole_tensor:
        ranges = None
    needed = range(n_models + 1) if method.uses_base else range(1, n_models + 1)
    if ranges is None:
        whole = {i: read(i, key, None, None) for i in needed}
        source = single(whole)
        ranges = [(None, None)]
    else:
        whole = {}
        # A first pass reads every chunk again: read a tensor of moderate size once and slice it instead.
        hold = method.prepare is not None and info.nbytes <= (HELD_BYTES if held_bytes is None else held_bytes)
        held = {i: read(i, key, None, None) for i in needed} if hold else {}

        def rows_of(i: int, start: int, stop: int) -> torch.Tensor:
            return held[i][start:stop] if held else read(i, key, start, stop)

        def source(i: int) -> Iterator[torch.Tensor]:
            return (rows_of(i, a, b) for a, b in ranges)

    state = method.prepare(source, n_models, weights, params, key) if method.prepare else None
    for start, stop in ranges:
        rows = whole or {i: rows_of(i, start, stop) for i in needed}
        models = [rows[i + 1] for i in range(n_models)]
        # A method that ignores the base only needs its dtype, which models[0] shares: skip the read.
        base = rows[0] if method.uses_base else models[0]
        out = method.combine(base, models, weights, params, key, state)
        del models, base, rows  # free the inputs before the output is written
        yield out


def check_layouts(base: Mapping[str, Any], models: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """Keys, shapes and dtypes of every model agree with the base; the error names the first offender."""
    for name, m in zip(names, models):
        check_compatible(base, m, ("base model", name))  # TensorInfo has .shape and .dtype too


def _layout(sd: Mapping[str, torch.Tensor]) -> Mapping[str, Any]:
    """Shapes and dtypes to check: a lazy checkpoint answers from its header without reading data."""
    return sd.reader.infos if isinstance(sd, LazyStateDict) else sd


def merge_state_dicts(
    base: Mapping[str, torch.Tensor],
    models: Sequence[Mapping[str, torch.Tensor]],
    method: str | MergeMethod = "linear",
    weights: Sequence[float] | None = None,
    params: Any = None,
    include: Sequence[str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, torch.Tensor]:
    """Merge state dicts in memory; bit-identical to :func:`merge_checkpoints` on the same inputs.

    Args:
        base: the base (pre-trained / zero-shot) weights; integer tensors are taken from it.
        models: the models to merge (same keys, shapes and dtypes as ``base``).
        method: a registry name (see :data:`paint.weights.methods.METHODS`) or entry.
        weights: one weight or coefficient per model (default 1 each).
        params: the method's parameters (mapping or its params model).
        include: fnmatch patterns of keys to merge; the others are copied from the base.
        chunk_bytes: row-chunk size (same default as streaming).
    """
    m, w, p = resolve(method, len(models), weights, params)
    check_layouts(_layout(base), [_layout(x) for x in models], [f"model {i}" for i in range(len(models))])
    sources = [base, *models]
    selected = key_selector(include)

    def read(i: int, key: str, start: int | None, stop: int | None) -> torch.Tensor:
        t = sources[i][key]
        return t if start is None else t[start:stop]

    out: dict[str, torch.Tensor] = {}
    for key, t0 in base.items():
        chunks = list(merge_key(key, TensorInfo.of(t0), read, len(models), m, w, p, selected(key), chunk_bytes))
        merged = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        out[key] = merged.clone() if merged.data_ptr() == t0.data_ptr() else merged  # never alias the inputs
    return out


def check_files(readers: Sequence[CheckpointReader]) -> None:
    """Every safetensors input holds all the bytes its header promises (a truncated file fails here, not mid-merge)."""
    for r in readers:
        for f in r.files:
            if f.suffix == ".safetensors":
                check_safetensors_size(f)


def open_inputs(base: str | os.PathLike, models: Sequence[str | os.PathLike]) -> list[CheckpointReader]:
    """Open base and models lazily and check their layouts and sizes agree (headers only, no tensor data)."""
    readers = [CheckpointReader(base)] + [CheckpointReader(p) for p in models]
    check_layouts(readers[0].infos, [r.infos for r in readers[1:]], [f"model {p}" for p in models])
    check_files(readers)
    return readers


def stream_merge_into(
    out_dir: str | os.PathLike,
    readers: Sequence[CheckpointReader],
    method: MergeMethod,
    weights: Sequence[float],
    params: Any,
    include: Sequence[str] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
    hash_inputs: bool = False,
    known_hashes: Mapping[Path, str] | None = None,
) -> MergeStats:
    """Stream a merge of opened, checked inputs (``readers[0]`` the base) into an existing directory.

    With ``hash_inputs`` the sha256 of every distinct input file is computed from the bytes
    the merge reads (see :mod:`paint.weights.reads`) and returned in ``MergeStats.sha256``;
    files in ``known_hashes`` (resolved path -> sha256) are not hashed again.
    """
    t0 = time.perf_counter()
    infos = readers[0].infos
    selected = key_selector(include)
    reads = InputReads(readers, hashing=hash_inputs, unread=() if method.uses_base else (0,), known=known_hashes)
    writer = ShardedWriter(out_dir, infos, max_shard_bytes)
    merged = copied = 0
    with kept_heap():  # the same few chunk-sized buffers, again and again
        try:
            reads.start()
            for key, info in tqdm(infos.items(), total=len(infos), unit="tensor", desc="merge", disable=not progress):
                sel = selected(key) and info.dtype.is_floating_point
                writer.write(
                    key, merge_key(key, info, reads.read, len(readers) - 1, method, weights, params, sel, chunk_bytes)
                )
                merged += sel
                copied += not sel
            files = writer.close()
            digests = reads.digests()
            reads.check_unchanged()  # the files on disk are the ones merged and hashed
        except BaseException:
            writer.abort()
            raise
        finally:
            reads.close()
    return MergeStats(
        tensors=len(infos),
        merged=merged,
        copied=copied,
        bytes=sum(i.nbytes for i in infos.values()),
        files=[f.name for f in files],
        seconds=time.perf_counter() - t0,
        sha256={str(p): h for p, h in digests.items()},
    )


def merge_checkpoints(
    base: str | os.PathLike,
    models: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    method: str | MergeMethod = "linear",
    weights: Sequence[float] | None = None,
    params: Any = None,
    include: Sequence[str] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
) -> MergeStats:
    """Merge checkpoints on disk into an HF safetensors directory, streamed and atomic.

    Only the weights are written; :func:`paint.pipeline.merge.run_merge` adds config, tokenizer and
    model card. Arguments as in :func:`merge_state_dicts`, plus the shard size.
    """
    m, w, p = resolve(method, len(models), weights, params)
    readers = open_inputs(base, models)
    with atomic_path(out_dir) as tmp:
        Path(tmp).mkdir()
        return stream_merge_into(tmp, readers, m, w, p, include, max_shard_bytes, chunk_bytes, progress)
