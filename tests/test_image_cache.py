"""The preprocessing cache checks every image row against a stored digest and repairs damaged rows."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from paint.data import image_cache
from paint.data.image_cache import cache_info, cache_path
from paint.data.preprocess import ImageSpec, preprocess_split
from paint.data.task import ArraySplit

SPEC = ImageSpec(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class CountingSplit:
    """An ArraySplit that records which images were decoded."""

    def __init__(self, n: int = 8, identity: str = "test/cache"):
        rng = np.random.default_rng(3)
        self.inner = ArraySplit(rng.integers(0, 256, size=(n, 20, 24, 3), dtype=np.uint8), np.arange(n) % 2, identity)
        self.identity, self.labels, self.calls = identity, self.inner.labels, []

    def __len__(self) -> int:
        return len(self.inner)

    def image(self, i: int):
        self.calls.append(i)
        return self.inner.image(i)


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    # each test starts as a new process would: nothing verified yet
    monkeypatch.setattr(image_cache, "_VERIFIED", {})


def _damage(path, rows, value=0):
    """Overwrite image rows of a cached .npy in place (the header stays valid)."""
    mm = np.load(path, mmap_mode="r+")
    mm[rows] = value
    mm.flush()
    del mm
    image_cache._VERIFIED.clear()  # as a new process would see it


def test_zeroed_rows_are_detected_and_decoded_again(tmp_path, caplog):
    split = CountingSplit()
    truth = preprocess_split(split, SPEC, cache_dir=tmp_path).clone()
    path = cache_path(tmp_path, split.identity, SPEC.resize, SPEC.crop)
    _damage(path, [2, 5])
    split.calls.clear()
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        again = preprocess_split(split, SPEC, cache_dir=tmp_path)
    assert torch.equal(again, truth), "a damaged cache was trusted"
    assert sorted(split.calls) == [2, 5], "only the damaged rows are decoded again"
    lines = [r.getMessage() for r in caplog.records if r.name == "paint.data"]
    assert len(lines) == 1 and "2 of 8 images failed their checksum (first: image 2)" in lines[0]
    split.calls.clear()
    image_cache._VERIFIED.clear()
    assert torch.equal(preprocess_split(split, SPEC, cache_dir=tmp_path), truth) and not split.calls  # repaired on disk


def test_wholly_zeroed_cache_file_is_rebuilt(tmp_path, caplog):
    split = CountingSplit()
    truth = preprocess_split(split, SPEC, cache_dir=tmp_path).clone()
    path = cache_path(tmp_path, split.identity, SPEC.resize, SPEC.crop)
    _damage(path, slice(None))  # every pixel zeroed, as in the issue (48.0% -> 29.0%)
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        assert torch.equal(preprocess_split(split, SPEC, cache_dir=tmp_path), truth)
    assert [r.getMessage() for r in caplog.records if "8 of 8 images failed" in r.getMessage()]
    path.write_bytes(b"\0" * path.stat().st_size)  # header too
    image_cache._VERIFIED.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        assert torch.equal(preprocess_split(split, SPEC, cache_dir=tmp_path), truth)
    assert [r for r in caplog.records if "not a readable .npy" in r.getMessage() and "rebuilding" in r.getMessage()]


def test_cache_without_checksums_is_rebuilt_and_digests_stay_out_of_cache_info(tmp_path, caplog):
    split = CountingSplit()
    preprocess_split(split, SPEC, cache_dir=tmp_path)
    path = cache_path(tmp_path, split.identity, SPEC.resize, SPEC.crop)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["row_hash"] == "sha256[:16]" and len(meta["row_digests"]) == 8
    path.with_suffix(".json").write_text(json.dumps({k: v for k, v in meta.items() if k != "row_digests"}))
    split.calls.clear()
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        preprocess_split(split, SPEC, cache_dir=tmp_path)
    assert len(split.calls) == 8 and [r for r in caplog.records if "row checksums are missing" in r.getMessage()]
    (info,) = cache_info(tmp_path)
    assert info["n"] == 8 and "row_digests" not in info


def test_verified_once_per_file_state(tmp_path, monkeypatch):
    split = CountingSplit()
    preprocess_split(split, SPEC, cache_dir=tmp_path)
    image_cache._VERIFIED.clear()
    checked = []
    real = image_cache.bad_rows
    monkeypatch.setattr(image_cache, "bad_rows", lambda path, d, **kw: checked.append(1) or real(path, d, **kw))
    for _ in range(3):  # a sweep opens the cache once per alpha
        preprocess_split(split, SPEC, cache_dir=tmp_path)
    assert len(checked) == 1
