"""Bad image files: truncated JPEGs are counted and skipped at read time, errors name files, huge images warn once."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paint.data import readers as R
from paint.data.images import check_image
from paint.data.preprocess import ImageSpec, preprocess_split
from paint.data.task import FileSplit, SubsetSplit
from paint.errors import PaintError

SPEC = ImageSpec(8, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def write_jpeg(path: Path, seed: int, size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_jpeg_folder(root: Path, per_class: int) -> list[Path]:
    return [write_jpeg(root / c / f"{i}.jpg", 100 * k + i) for k, c in enumerate(("a", "b")) for i in range(per_class)]


def test_truncated_jpeg_passes_verify_but_not_the_check(tmp_path):
    path = truncate(write_jpeg(tmp_path / "x.jpg", 0))
    with Image.open(path) as im:
        im.verify()  # the old read-time check: no error, which is why the run used to abort later
    assert "truncated" in check_image(str(path)).problem
    assert check_image(str(write_jpeg(tmp_path / "ok.jpg", 1))).problem is None


def test_truncated_jpeg_is_counted_skipped_and_named(tmp_path, caplog):
    paths = make_jpeg_folder(tmp_path, per_class=60)
    bad = truncate(paths[7])
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        res = R.read_image_folder(tmp_path)
    split = res.splits["all"]
    assert len(split) == 119 and res.info["bad_images"] == 1 and str(bad) not in split.paths
    lines = [r.getMessage() for r in caplog.records if r.name == "paint.data"]
    assert len(lines) == 1 and "skipped 1 unreadable of 120" in lines[0] and str(bad) in lines[0]
    assert preprocess_split(split, SPEC).shape == (119, 3, 8, 8)  # the run goes on


def test_too_many_truncated_jpegs_is_an_error_naming_a_file(tmp_path):
    paths = make_jpeg_folder(tmp_path, per_class=3)
    bad = truncate(paths[0])
    with pytest.raises(PaintError, match=rf"1 of 6 images are unreadable .*e\.g\. {re.escape(str(bad))} \(OSError"):
        R.read_image_folder(tmp_path)


def test_decode_error_at_preprocessing_names_the_file(tmp_path):
    """A file that breaks after the read-time check: the error names it, not a split index."""
    paths = [write_jpeg(tmp_path / f"{i}.jpg", i) for i in range(3)]
    split = FileSplit(tuple(map(str, paths)), np.zeros(3, dtype=np.int64), "files:x")
    truncate(paths[2])
    view = SubsetSplit(split, np.array([0, 2]), "files:x/sub")  # index 1 of the view is file 2
    with pytest.raises(PaintError, match=rf"^{re.escape(str(paths[2]))}: could not be decoded .* image 1 of split"):
        preprocess_split(view, SPEC)


def test_huge_images_get_one_paint_warning_not_pils(tmp_path, caplog, monkeypatch):
    make_jpeg_folder(tmp_path, per_class=2)
    big = write_jpeg(tmp_path / "a" / "big.jpg", 9, size=(30, 20))  # 600 pixels
    write_jpeg(tmp_path / "b" / "big.jpg", 8, size=(30, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the small images (480 px) stay under it
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="paint.data"):
        warnings.simplefilter("always")
        res = R.read_image_folder(tmp_path)
        preprocess_split(res.splits["all"], SPEC)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)], "PIL's raw warning leaked"
    lines = [r.getMessage() for r in caplog.records if r.name == "paint.data"]
    assert len(lines) == 1 and "2 images exceed 500 pixels" in lines[0] and str(big) in lines[0]
    assert len(res.splits["all"]) == 6  # kept: they decode, just slowly
