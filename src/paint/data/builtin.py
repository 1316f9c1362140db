"""Built-in tasks: scikit-learn's handwritten digits (real data) and the synthetic world's tasks."""

from __future__ import annotations

import numpy as np

from paint.data.task import ArraySplit, Task, holdout_split
from paint.world.tasks import BENCHMARK_TASKS, DIGIT_CLASSNAMES, DIGIT_TEMPLATES, WORLD_TASKS

DIGITS_TEST_SIZE = 600  # of 1,797; fixed, so every run tests on the same images


def digits_task(val_fraction: float = 0.1, val_max: int = 5000, split_seed: int = 0) -> tuple[Task, dict]:
    """scikit-learn's 8x8 handwritten digits (1,797 real scans): the analogue of CLIP on MNIST.

    Test is a fixed 600 images (permutation with seed 0); validation is held out from the rest
    with ``split_seed``. Pixels 0..16 become grey levels 0..255, ink bright on dark, as in MNIST.
    """
    from sklearn.datasets import load_digits

    # The same class names and prompts as the world's rendered digits (CLIP's MNIST prompt
    # among them), so the digits head is the one the model already has for digits.

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (N, 8, 8)
    labels = data.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(labels))
    test_idx, rest_idx = np.sort(perm[:DIGITS_TEST_SIZE]), np.sort(perm[DIGITS_TEST_SIZE:])
    rest = ArraySplit(images[rest_idx], labels[rest_idx], "sklearn-digits/v1/trainval")
    test = ArraySplit(images[test_idx], labels[test_idx], "sklearn-digits/v1/test")
    train, val, info = holdout_split(rest, val_fraction, val_max, split_seed)
    task = Task(
        name="digits",
        classnames=DIGIT_CLASSNAMES,
        templates=DIGIT_TEMPLATES,
        splits={"train": train, "val": val, "test": test},
        description="scikit-learn handwritten digits (8x8 scans, 10 classes)",
    )
    return task, {"test": {"size": DIGITS_TEST_SIZE, "seed": 0}, "val": info}


def builtin_task_names() -> tuple[str, ...]:
    """Every built-in task name: ``digits``, the synthetic world's tasks and its merging-benchmark tasks."""

    return ("digits", *WORLD_TASKS, *BENCHMARK_TASKS)
