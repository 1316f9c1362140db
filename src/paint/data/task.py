"""Tasks and splits: what the rest of paint needs to know about a dataset.

A :class:`Task` is class names, prompt templates and named splits. A split is anything
that follows the :class:`ImageSplit` protocol: a length, integer labels, a way to get one
image as an RGB PIL image, and an ``identity`` string that changes whenever its content
does (it keys the preprocessing cache).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from paint.data.images import open_rgb
from paint.errors import PaintError
from paint.utils import sha256_strings


@runtime_checkable
class ImageSplit(Protocol):
    """One split of a task: ``len(split)`` images with integer labels in ``[0, C)``."""

    identity: str

    def __len__(self) -> int: ...

    @property
    def labels(self) -> np.ndarray: ...  # (N,) int64

    def image(self, index: int) -> Image.Image: ...


@dataclass(frozen=True)
class ArraySplit:
    """Images held in memory as a uint8 array, (N, H, W) grey or (N, H, W, 3) RGB."""

    images: np.ndarray
    labels: np.ndarray
    identity: str

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise PaintError(f"split {self.identity}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        arr = self.images[index]
        img = Image.fromarray(arr)
        return img.convert("RGB")


@dataclass(frozen=True)
class FileSplit:
    """Images read lazily from files (or any opener) with known labels."""

    paths: tuple[str, ...]
    labels: np.ndarray
    identity: str
    opener: Callable[[str], Image.Image] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Image.Image:
        path = self.paths[index]
        if self.opener is not None:
            return self.opener(path).convert("RGB")
        return open_rgb(path)


@dataclass(frozen=True)
class SubsetSplit:
    """A view on some indices of another split (validation held out from train, etc.)."""

    base: ImageSplit
    indices: np.ndarray
    identity: str

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.base.labels)[self.indices]

    def image(self, index: int) -> Image.Image:
        return self.base.image(int(self.indices[index]))


def image_source(split: ImageSplit, index: int) -> str:
    """Where image ``index`` of ``split`` comes from: its file path when it has one, else ``identity[index]``.

    Errors name the file a user can fix, not a position in a derived split.
    """
    while isinstance(split, SubsetSplit):
        split, index = split.base, int(split.indices[index])
    if isinstance(split, FileSplit):
        return split.paths[index]
    return f"{split.identity}[{index}]"


@dataclass(frozen=True)
class Task:
    """A classification task: class names, prompt templates (with ``{}``) and splits."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    splits: Mapping[str, ImageSplit] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.classnames:
            raise PaintError(f"task {self.name!r} has no class names")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise PaintError(f"task {self.name!r}: every prompt template must contain '{{}}'")

    def split(self, name: str) -> ImageSplit:
        if name not in self.splits:
            raise PaintError(f"task {self.name!r} has no split {name!r} (it has: {', '.join(self.splits) or 'none'})")
        split = self.splits[name]
        validate_split(self, name, split)
        return split


def validate_split(task: Task, split_name: str, split: ImageSplit) -> None:
    """Refuse empty splits and labels outside the class list, naming the task and split."""
    n = len(split)
    if n == 0:
        raise PaintError(f"task {task.name!r} split {split_name!r} has zero images")
    labels = np.asarray(split.labels)
    if labels.min() < 0 or labels.max() >= len(task.classnames):
        raise PaintError(
            f"task {task.name!r} split {split_name!r}: label {int(labels.max())} is outside the "
            f"{len(task.classnames)} class names given; the class-name list does not fit the data"
        )


def holdout_split(
    split: ImageSplit,
    fraction: float = 0.1,
    max_size: int = 5000,
    seed: int = 0,
    held_out: str = "val",
    kept: str = "train",
) -> tuple[SubsetSplit, SubsetSplit, dict]:
    """Hold out a validation set from a training split, as the PAINT code does.

    Returns (kept, held out, definition); the definition (seed, sizes and the SHA-256 of the
    held-out indices) goes into results so the split can be reproduced. ``held_out`` and
    ``kept`` name the two parts (a test set held out of all the data: "test", "trainval") in
    the definition's keys and the splits' identities.
    """

    n = len(split)
    n_val = min(max_size, max(1, int(round(fraction * n))))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:])
    sha = sha256_strings(map(str, val_idx.tolist()))
    digest = sha[:16]  # identities (cache keys) keep a 16-hex prefix
    definition = {
        "seed": seed,
        "fraction": fraction,
        "max_size": max_size,
        f"{kept}_size": int(len(train_idx)),
        f"{held_out}_size": int(len(val_idx)),
        f"{held_out}_indices_sha256": sha,
    }
    train = SubsetSplit(split, train_idx, f"{split.identity}/{kept}-{digest}")
    val = SubsetSplit(split, val_idx, f"{split.identity}/{held_out}-{digest}")
    return train, val, definition


def as_tuple(xs: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(x) for x in xs)
