"""What the case studies share: demo-sized fine-tuning and seeded subsets of a split."""

from __future__ import annotations

import numpy as np

from paint.data.task import ImageSplit, SubsetSplit
from paint.train.finetune import FinetuneConfig


def demo_finetune(epochs: int) -> FinetuneConfig:
    """Demo-sized fine-tuning for the small offline-world model (a few CPU minutes at most)."""
    return FinetuneConfig(epochs=epochs, lr=3e-4, batch_size=128, warmup_steps=20)


def capped(split: ImageSplit, n: int | None, seed: int, salt: int) -> ImageSplit:
    """At most ``n`` images of a split: a seeded subset (``salt`` keeps each study's draw its own)."""
    if n is None or len(split) <= n:
        return split
    idx = np.sort(np.random.default_rng([seed, salt]).choice(len(split), size=n, replace=False))
    return SubsetSplit(split, idx, f"{split.identity}/cap{n}-{seed}")
