"""The sha256 cache of merge inputs: a second merge of unchanged files hashes nothing, a changed file is hashed again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from paint.pipeline.merge import MergeConfig, run_merge
from paint.weights import hashcache, reads, writer
from paint.weights.hashcache import HashCache, default_cache_dir, stamp


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ckpts(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(64, 8, generator=g), "b": torch.randn(8, generator=g)}
    ft = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return writer.save_state_dict(base, tmp_path / "base"), writer.save_state_dict(ft, tmp_path / "ft")


def _merge(base: Path, ft: Path, out: Path, **kw) -> dict:
    cfg = MergeConfig(base=str(base), models=[{"path": str(ft), "weight": 0.5}], method="task_arithmetic",
                      output=str(out), **kw)  # fmt: skip
    return run_merge(cfg, progress=False)


def test_second_merge_of_unchanged_inputs_reads_hashes_from_the_cache(ckpts, tmp_path, monkeypatch):
    base, ft = ckpts
    first = _merge(base, ft, tmp_path / "o1")
    assert [r["cached"] for r in first["input_hashes"]] == [False, False]
    assert [r["sha256"] for r in first["input_hashes"]] == [
        _sha(base / "model.safetensors"),
        _sha(ft / "model.safetensors"),
    ]
    # the second merge computes no sha256 at all: every file's hash comes from the cache
    monkeypatch.setattr(reads.hashlib, "sha256", lambda *a: pytest.fail("an input was hashed again"))
    second = _merge(base, ft, tmp_path / "o2")
    assert [r["cached"] for r in second["input_hashes"]] == [True, True]
    assert [r["sha256"] for r in second["input_hashes"]] == [r["sha256"] for r in first["input_hashes"]]
    assert json.loads((tmp_path / "o2" / "merge_summary.json").read_text())["input_hashes"][0]["cached"] is True


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(ckpts, tmp_path):
    base, ft = ckpts
    _merge(base, ft, tmp_path / "o1")
    f = ft / "model.safetensors"
    st = os.stat(f)
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor: same size, still a valid file
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back: only ctime tells
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    rows = _merge(base, ft, tmp_path / "o2")["input_hashes"]
    assert [r["cached"] for r in rows] == [True, False]
    assert rows[1]["sha256"] == _sha(f)


def test_no_cache_is_written_when_turned_off(ckpts, tmp_path):
    base, ft = ckpts
    _merge(base, ft, tmp_path / "o1", hash_cache=False)
    assert not (default_cache_dir() / hashcache.CACHE_FILE).exists()
    rows = _merge(base, ft, tmp_path / "o2")["input_hashes"]
    assert [r["cached"] for r in rows] == [False, False]


def test_unreadable_lines_are_skipped_and_a_changed_file_is_not_stored(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    s = stamp(f)
    cache = HashCache(tmp_path / "c")
    cache.store({s: _sha(f)})
    with open(cache.path, "a") as fh:
        fh.write('{"path": "torn line", "dev": 1\n')  # a crash mid-write
        fh.write('{"path": "%s", "dev": 1, "ino": 1, "size": 3, "mtime_ns": 1, "ctime_ns": 1, "sha256": "xyz"}\n' % f)
    again = HashCache(tmp_path / "c")
    assert again.lookup([s]) == {str(f.resolve()): _sha(f)}
    f.write_bytes(b"abcd")  # changed between the merge's stamp and the store: not recorded
    again.store({s: "0" * 64})
    assert HashCache(tmp_path / "c").lookup([stamp(f)]) == {}


def test_an_unwritable_cache_only_warns(ckpts, tmp_path, monkeypatch, caplog):
    base, ft = ckpts
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("PAINT_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger="paint.pipeline.merge"):
        summary = _merge(base, ft, tmp_path / "o1")
    assert (tmp_path / "o1" / "model.safetensors").is_file() and len(summary["input_hashes"]) == 2
    assert "could not be written" in caplog.text


def test_cache_directory_follows_the_environment(tmp_path):
    assert default_cache_dir({"PAINT_CACHE": str(tmp_path)}) == tmp_path
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "paint"
    assert default_cache_dir({}) == Path.home() / ".cache" / "paint"


def test_the_cache_is_compacted_to_its_live_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "_COMPACT_FACTOR", 1)
    cache = HashCache(tmp_path / "c")
    files = []
    for i in range(20):
        f = tmp_path / f"f{i}"
        f.write_bytes(bytes([i]))
        files.append(f)
        cache.store({stamp(f): _sha(f)})
    files[0].unlink()
    f = files[1]
    f.write_bytes(b"new")
    cache.store({stamp(f): _sha(f)})  # 21 lines > 1 x 20 entries: rewritten without the deleted file
    lines = cache.path.read_text().splitlines()
    assert len(lines) == 19
    assert HashCache(tmp_path / "c").lookup([stamp(p) for p in files[1:]]) == {
        str(p.resolve()): _sha(p) for p in files[1:]
    }
