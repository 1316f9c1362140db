"""Training data: one task's images and head, every task's rows as one dataset, the seeded loaders.

Nothing here knows a recipe: a recipe's loss receives the batches ``(uint8 images (B, 3, S, S),
labels (B,), task indices (B,))`` and decides what to do with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from paint.data.rows import cache_file, read_rows


@dataclass(frozen=True)
class TrainingSet:
    """One task's training data: uint8 images (N, 3, S, S), labels (N,), frozen head (C, D).

    ``images`` is a tensor or a numpy array; the preprocessing cache's memory map is read a batch
    at a time (:class:`TrainingBatches`), so a training set need not fit in memory.

    ``classnames`` and ``templates`` are the prompts the head was built from (the flyp recipe's captions).
    """

    name: str
    images: torch.Tensor | np.ndarray
    labels: np.ndarray
    head: torch.Tensor
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The crop/flip generator of one epoch: a function of (seed, epoch) alone.

    Seeding per epoch (rather than once per process) is what makes a run resumed after epoch
    k draw the same crops as an uninterrupted one. The offset keeps this stream apart from
    the loader's shuffle, which is seeded from the same (seed, epoch).
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + (1 << 62))


class TrainingBatches(Dataset):
    """Every set's (image, label, task index) as one indexable dataset, read a batch at a time.

    Nothing is concatenated: a batch's rows are read from each set's images as they are (a cache
    file through a map that lives for that batch, see :func:`paint.data.rows.read_rows`), so a
    fine-tuning epoch needs one batch of images in memory, not the training set (SVHN at 224 px
    is 11 GB). The DataLoader hands :meth:`__getitems__` a whole batch of indices at once.
    Pickled for a loader worker, a cache file travels as its path, not its contents.
    """

    def __init__(self, sets: Sequence[TrainingSet]):
        self.images = [s.images for s in sets]
        sizes = [len(s.labels) for s in sets]
        self.offsets = np.cumsum([0] + sizes)  # global index of each set's row 0
        self.labels = torch.as_tensor(np.concatenate([np.asarray(s.labels) for s in sets]), dtype=torch.long)
        self.task_ids = torch.repeat_interleave(torch.arange(len(sets)), torch.as_tensor(sizes))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, task_ids = self.__getitems__([index])
        return images[0], labels[0], task_ids[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 images (B, 3, S, S), labels (B,), task indices (B,)) of ``indices``, in their order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        task_ids = self.task_ids[idx]
        if len(self.images) == 1:
            images = read_rows(self.images[0], idx.numpy())
        else:
            images = torch.empty((len(idx),) + tuple(self.images[0].shape[1:]), dtype=torch.uint8)
            for t in torch.unique(task_ids).tolist():
                where = (task_ids == t).nonzero().flatten()
                images[where] = read_rows(self.images[t], (idx[where] - int(self.offsets[t])).numpy())
        return images, self.labels[idx], task_ids

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["images"] = [("cache file", cache_file(x)) if cache_file(x) else x for x in self.images]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["images"] = [np.load(x[1], mmap_mode="c") if isinstance(x, tuple) else x for x in state["images"]]
        self.__dict__.update(state)


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function: :meth:`TrainingBatches.__getitems__` already returns a batch."""
    return batch


def make_loader_factory(
    sets: Sequence[TrainingSet], batch_size: int, seed: int, workers: int = 0, pin_memory: bool = False
) -> Callable[[int], DataLoader]:
    """epoch -> shuffled loader over every set's (image, label, task index); the shuffle is seeded by (seed, epoch).

    The batches do not depend on ``workers``: the shuffle is drawn in this process and each worker
    only reads the rows it is handed (augmentation happens later, in the loss, from its own seed).
    """
    dataset = TrainingBatches(sets)

    def make_loader(epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=g,
            drop_last=False,
            collate_fn=_as_batch,
            num_workers=workers,
            pin_memory=pin_memory,
        )

    return make_loader


def loader_workers(requested: int | None, on_gpu: bool) -> int:
    """Training-loader worker processes: as asked, else 0 on a CPU (the step dominates) and up to 4 on a GPU.

    On a GPU a step of ViT-B/32 takes a few tens of milliseconds, as long as reading and copying
    its batch; workers read the next batches while the device computes.
    """
    if requested is not None:
        return requested
    if not on_gpu:
        return 0
    return min(4, max(1, len(os.sched_getaffinity(0)) - 1))
