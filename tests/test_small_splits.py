"""A task whose validation split is too small to choose alpha on warns once, saying what to do."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from paint.data.registry import MIN_VAL_IMAGES, load_task, small_split_warnings
from paint.data.spec import TaskSpec
from paint.data.task import ArraySplit, Task


def make_folder(root: Path, per_class: int, subsets: tuple[str, ...] = ("",)) -> Path:
    for s in subsets:
        for c in ("cat", "dog"):
            for i in range(per_class):
                (root / s / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((5, 6, 3), (10 * i) % 256, np.uint8)).save(root / s / c / f"{i}.png")
    return root


def test_four_image_folder_warns_once_with_what_to_do(tmp_path, caplog):
    make_folder(tmp_path, per_class=2)
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        task, _ = load_task(TaskSpec(name="tiny", source="folder", path=str(tmp_path)))
    assert len(task.splits["val"]) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "paint.data"]
    assert lines == [
        "task 'tiny': the validation split has only 1 image (at least 50 advised), so alpha is chosen on noise; "
        "add data (train and validation hold 3 images in all)"
    ]


def _task(n_train: int, n_val: int) -> Task:
    def split(n):
        return ArraySplit(np.zeros((n, 4, 4), np.uint8), np.zeros(n, np.int64), f"x{n}")

    return Task("t", ("a",), ("a {}.",), {"train": split(n_train), "val": split(n_val), "test": split(5)})


def test_small_split_advice_depends_on_where_val_comes_from():
    spec = TaskSpec(name="t", val_fraction=0.1)
    derived = {"val": {"derived": True}}
    (msg,) = small_split_warnings(_task(270, 30), spec, derived)
    assert msg.endswith("raise val_fraction (now 0.1) to 0.17 or add data") and "only 30 images" in msg
    (msg,) = small_split_warnings(_task(270, 30), spec, {"val": {"derived": False, "official": True}})
    assert msg.endswith("add validation images to the data")
    assert small_split_warnings(_task(900, MIN_VAL_IMAGES), spec, derived) == []
    assert small_split_warnings(Task("t", ("a",), ("a {}.",), {}), spec, derived) == []


def test_large_enough_task_is_silent(tmp_path, caplog):
    make_folder(tmp_path, per_class=30, subsets=("train", "val"))
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        task, _ = load_task(TaskSpec(name="ok", source="folder", path=str(tmp_path)))
    assert len(task.splits["val"]) == 60 and not [r for r in caplog.records if r.name == "paint.data"]
