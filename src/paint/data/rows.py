"""Reading batches of preprocessed images without holding a whole split in memory.

Preprocessed splits are uint8 ``(N, 3, S, S)``: a tensor, an in-memory array, or the
preprocessing cache's memory-mapped ``.npy`` (:mod:`paint.data.image_cache`). A long-lived map
of a cache file keeps every page it ever touched in the process's resident set, so one epoch
over SVHN at 224 px (11 GB) would end with 11 GB resident even though nothing was copied.
:func:`read_rows` therefore reads a cache file through a map that lives for one batch only (the
pattern nanoGPT uses for its token files): the pages stay in the kernel's page cache, shared
and reclaimable, and the process's peak memory is one batch, whatever the split's size.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch

Index = slice | np.ndarray | torch.Tensor | list[int]


def cache_file(images: object) -> str | None:
    """The ``.npy`` file behind ``images`` when it is a whole memory-mapped file, else None.

    A view (a slice of a map) is not a whole file: it is read through its own indexing.
    """
    if isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.filename:
        return str(images.filename)
    return None


def read_rows(images: object, index: Index) -> torch.Tensor:
    """``images[index]`` as a uint8 tensor, never a view of a memory map.

    Args:
        images: uint8 ``(N, 3, S, S)``: a tensor, a numpy array, or a cache file's memmap.
        index: a slice or integer indices (any order; repeats allowed).

    Example:
        >>> import numpy as np
        >>> from paint.data.rows import read_rows
        >>> read_rows(np.arange(12, dtype=np.uint8).reshape(3, 4), np.array([2, 0])).tolist()
        [[8, 9, 10, 11], [0, 1, 2, 3]]
    """
    path = cache_file(images)
    if path is None:
        if isinstance(images, torch.Tensor):
            return images[torch.as_tensor(index) if not isinstance(index, slice) else index]
        return torch.from_numpy(np.array(images[_numpy_index(index)]))  # a copy: no view of a map survives
    mapped = np.load(path, mmap_mode="r")  # a fresh map, dropped (unmapped) when this call returns
    if mapped.shape != images.shape:  # the file was replaced under us
        raise ValueError(f"{path} now holds {mapped.shape}, expected {images.shape}")
    if isinstance(index, slice):
        return torch.from_numpy(np.array(mapped[index]))
    rows = np.asarray(index, dtype=np.int64)
    order = np.argsort(rows, kind="stable")  # read in file order (sequential I/O), hand back in the asked order
    out = np.empty((len(rows),) + mapped.shape[1:], dtype=mapped.dtype)
    out[order] = mapped[rows[order]]
    return torch.from_numpy(out)


def _numpy_index(index: Index) -> slice | np.ndarray:
    if isinstance(index, slice):
        return index
    return np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
