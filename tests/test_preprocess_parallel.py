"""Preprocessing with a pool of decoding threads gives the same bytes, the same errors and the same progress."""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paint.config import parse_config
from paint.data import image_cache, parallel
from paint.data.image_cache import cache_path
from paint.data.parallel import ordered_map, resolve_workers
from paint.data.preprocess import ImageSpec, preprocess_split
from paint.data.task import ArraySplit, FileSplit
from paint.errors import PaintError
from paint.pipeline.run import ModelRunConfig
from paint.pipeline.rundir import DEFAULT_IGNORED, config_differences
from paint.studies.triage import TriageConfig

SPEC = ImageSpec(36, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # resize and crop both act


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    monkeypatch.setattr(image_cache, "_VERIFIED", {})  # every call opens the cache as a new process would


def write_images(folder: Path, n: int) -> list[str]:
    """``n`` PNG and JPEG files of mixed sizes (20-80 px, portrait and landscape) with some structure."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(20, 81, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy + 40 * i) % 256], axis=-1)
        img = np.clip(img + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(img).save(path, quality=85)
        paths.append(str(path))
    return paths


def cache_files(cache_dir: Path, split) -> tuple[bytes, dict]:
    path = cache_path(cache_dir, split.identity, SPEC.resize, SPEC.crop)
    return path.read_bytes(), json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def assert_same_cache_for_1_and_2_workers(split, tmp_path: Path) -> None:
    one = preprocess_split(split, SPEC, cache_dir=tmp_path / "w1", num_workers=1).clone()
    two = preprocess_split(split, SPEC, cache_dir=tmp_path / "w2", num_workers=2).clone()
    npy1, meta1 = cache_files(tmp_path / "w1", split)
    npy2, meta2 = cache_files(tmp_path / "w2", split)
    assert npy1 == npy2  # the .npy file, header included, byte for byte
    assert meta1["row_digests"] == meta2["row_digests"] and meta1 == meta2
    assert torch.equal(one, two)
    assert torch.equal(preprocess_split(split, SPEC, num_workers=2), one)  # the uncached path too
    assert torch.equal(preprocess_split(split, SPEC, num_workers=0), one)
    assert torch.equal(preprocess_split(split, SPEC), one)  # automatic


def test_array_split_cache_is_byte_identical_with_two_workers(tmp_path):
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, size=(40, 30, 50, 3), dtype=np.uint8), np.arange(40) % 3, "t/array")
    assert_same_cache_for_1_and_2_workers(split, tmp_path)


def test_file_split_of_png_and_jpeg_cache_is_byte_identical_with_two_workers(tmp_path):
    paths = write_images(tmp_path / "images", 30)
    assert {Image.open(p).size for p in paths[:6]} != {Image.open(paths[0]).size}  # really mixed sizes
    split = FileSplit(tuple(paths), np.arange(30) % 2, "t/files")
    assert_same_cache_for_1_and_2_workers(split, tmp_path)


def test_two_workers_decode_concurrently_through_a_closure_opener(tmp_path):
    # Every decode waits for a partner: with one thread this would time out (and fail the run).
    paths = write_images(tmp_path / "images", 12)
    barrier = threading.Barrier(2, timeout=10)
    threads: set[str] = set()

    def opener(path: str) -> Image.Image:  # a closure: a process pool would have to pickle it
        threads.add(threading.current_thread().name)
        barrier.wait()
        with Image.open(path) as im:
            return im.convert("RGB")

    split = FileSplit(tuple(paths), np.zeros(12, dtype=np.int64), "t/closure", opener=opener)
    got = preprocess_split(split, SPEC, num_workers=2)
    assert len(threads) == 2 and all(t.startswith("paint-decode") for t in threads)
    plain = FileSplit(tuple(paths), np.zeros(12, dtype=np.int64), "t/plain")
    assert torch.equal(got, preprocess_split(plain, SPEC, num_workers=1))


def test_repair_with_workers_restores_the_same_bytes(tmp_path):
    split = FileSplit(tuple(write_images(tmp_path / "images", 16)), np.zeros(16, dtype=np.int64), "t/repair")
    truth = preprocess_split(split, SPEC, cache_dir=tmp_path / "c", num_workers=1).clone()
    path = cache_path(tmp_path / "c", split.identity, SPEC.resize, SPEC.crop)
    original = path.read_bytes()
    mm = np.load(path, mmap_mode="r+")
    mm[[1, 4, 11]] = 0
    mm.flush()
    del mm
    image_cache._VERIFIED.clear()
    assert torch.equal(preprocess_split(split, SPEC, cache_dir=tmp_path / "c", num_workers=2), truth)
    assert path.read_bytes() == original


@pytest.mark.parametrize("cached", [False, True])
def test_a_broken_file_under_workers_raises_the_error_naming_the_first_bad_file(tmp_path, cached):
    paths = write_images(tmp_path / "images", 20)
    first, later = Path(paths[4]), Path(paths[15])  # both JPEGs
    first.write_bytes(first.read_bytes()[:200])  # truncated
    later.write_bytes(b"not an image at all")
    split = FileSplit(tuple(paths), np.zeros(20, dtype=np.int64), "t/broken")
    cache = tmp_path / "cache" if cached else None
    # the sequential loop stops at image 4; the pool raises the same error, whichever thread failed first
    expected = rf"^{re.escape(str(first))}: could not be decoded .*image 4 of split t/broken"
    with pytest.raises(PaintError, match=expected) as seq:
        preprocess_split(split, SPEC, cache_dir=cache, num_workers=1)
    with pytest.raises(PaintError, match=expected) as par:
        preprocess_split(split, SPEC, cache_dir=cache, num_workers=2)
    assert str(par.value) == str(seq.value)
    if cached:
        assert not list(cache.glob("*.npy")) and not list(cache.glob("*.json"))  # nothing half-written kept


def test_progress_counts_every_row_in_order_with_workers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAINT_PROGRESS_INTERVAL", "0")  # a line per image (stderr is not a terminal here)
    monkeypatch.delenv("PAINT_PROGRESS", raising=False)
    split = FileSplit(tuple(write_images(tmp_path / "images", 10)), np.zeros(10, dtype=np.int64), "t/progress")
    preprocess_split(split, SPEC, cache_dir=tmp_path / "c", progress=True, num_workers=2)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("preprocess t/progress")]
    # every row but the last gets a periodic line; the last one is reported once, by the end line
    assert [ln.split(": ")[1].split(" ")[0] for ln in lines[:-1]] == [f"{k}/10" for k in range(1, 10)]
    assert "done: 10/10 img" in lines[-1]


def test_ordered_map_keeps_order_and_bounds_the_items_in_flight():
    started, finished, most = [], [], [0]
    lock = threading.Lock()

    def slow_square(i: int) -> int:
        with lock:
            started.append(i)
            most[0] = max(most[0], len(started) - len(finished))
        threading.Event().wait(0.001 * (i % 3))
        with lock:
            finished.append(i)
        return i * i

    out = []
    for k, v in enumerate(ordered_map(slow_square, range(60), num_workers=2, window=5)):
        assert len(started) <= k + 6  # at most the window (5) beyond the item being handed over
        out.append(v)
    assert out == [i * i for i in range(60)] and most[0] <= 2


def test_default_workers_follow_the_cores_capped_at_8(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 32)
    assert resolve_workers(None) == 8
    monkeypatch.setattr(parallel, "available_cores", lambda: 1)
    assert resolve_workers(None) == 1
    assert resolve_workers(0) == resolve_workers(1) == 1 and resolve_workers(3) == 3


def test_negative_num_workers_is_refused_in_calls_and_configs(tmp_path):
    split = ArraySplit(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.zeros(2, dtype=np.int64), "t/neg")
    with pytest.raises(PaintError, match=r"num_workers must be a whole number >= 0 \(0 or 1: decode in this"):
        preprocess_split(split, SPEC, num_workers=-1)
    for cls in (ModelRunConfig, TriageConfig):
        with pytest.raises(PaintError, match=r"num_workers: Input should be greater than or equal to 0"):
            parse_config(cls, {"output_dir": str(tmp_path), "num_workers": -2})
        assert parse_config(cls, {"output_dir": str(tmp_path)}).num_workers is None


def test_num_workers_does_not_block_a_resume():
    stored = {"output_dir": "r", "num_workers": 1, "eval_batch_size": 256}
    assert config_differences(stored, {**stored, "num_workers": 8}, DEFAULT_IGNORED) == []
    assert config_differences(stored, {**stored, "num_workers": 8}) != []  # it is a difference, just an ignored one


def test_decoding_threads_leave_the_warning_filters_as_they_were(tmp_path):
    # open_rgb mutes PIL's size warning with catch_warnings, which is process-wide state
    split = FileSplit(tuple(write_images(tmp_path / "images", 60)), np.zeros(60, dtype=np.int64), "t/filters")
    before = list(warnings.filters)
    preprocess_split(split, SPEC, num_workers=2)
    assert warnings.filters == before


def test_triage_resume_fingerprint_ignores_num_workers(monkeypatch, tmp_path):
    from paint.studies import triage

    monkeypatch.setattr(triage, "fingerprint_parts", lambda bundle: {"text": "t", "image_tower": "i"})
    base = {"output_dir": str(tmp_path)}
    one, eight = (parse_config(TriageConfig, {**base, "num_workers": k}) for k in (1, 8))
    assert triage._fingerprint(one, None) == triage._fingerprint(eight, None)
    assert triage._fingerprint(one, None) != triage._fingerprint(parse_config(TriageConfig, {**base, "seed": 1}), None)


def _probe_threads(monkeypatch, slow_in_pool: bool) -> list[str]:
    """Which thread mapped each of 120 items under ``num_workers=None`` when one side is made slow."""
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    names: list[str] = []

    def fn(i: int) -> int:
        name = threading.current_thread().name
        if name.startswith("paint-decode") == slow_in_pool:
            time.sleep(0.004)
        names.append(name)
        return i

    assert list(ordered_map(fn, range(120), None)) == list(range(120))
    return names


def test_automatic_workers_keep_the_pool_when_it_is_faster(monkeypatch):
    names = _probe_threads(monkeypatch, slow_in_pool=False)
    probe = 1 + parallel.PROBE_ITEMS  # warm-up + timed items in this thread
    assert all(not n.startswith("paint-decode") for n in names[:probe])
    assert all(n.startswith("paint-decode") for n in names[probe:])


def test_automatic_workers_drop_the_pool_when_it_is_slower(monkeypatch):
    names = _probe_threads(monkeypatch, slow_in_pool=True)
    in_pool = [k for k, n in enumerate(names) if n.startswith("paint-decode")]
    assert len(in_pool) <= 2 * parallel.PROBE_ITEMS + parallel.ROWS_IN_FLIGHT_PER_WORKER * 2  # probe + in flight
    assert all(not n.startswith("paint-decode") for n in names[in_pool[-1] + 1 :]) and len(names) - in_pool[-1] > 60


def test_pool_pays_needs_a_clear_gain():
    assert parallel.pool_pays(1.0, 0.5) and parallel.pool_pays(1.1, 1.0)
    assert not parallel.pool_pays(1.0, 0.95) and not parallel.pool_pays(1.0, 2.0)
