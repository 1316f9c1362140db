"""The merge's fast paths against the definitions they replace, bit for bit: TIES' sign election by
arithmetic, the trim by threshold, DARE's drop by multiply and its mask by ``torch.rand``, the finite
check by one sum; and the machinery of a fast merge: hashing and writing on threads of their own,
an input changed while it is merged."""

from __future__ import annotations

import math
import os
import threading

import pytest
import torch

from paint.errors import PaintError
from paint.weights import combine as C
from paint.weights import heap, io, reads, stream, subspace, writer
from paint.weights import methods as M
from paint.weights import sparsify as S
from paint.weights.backlog import Backlog


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN with NaN, +0 apart from -0)."""
    flat = [t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*flat)


def _taus(dtype: torch.dtype, n: int = 3) -> list[torch.Tensor]:
    """Task vectors with zeros of both signs, exact ties, cancelling entries and an infinity."""
    g = torch.Generator().manual_seed(7)
    taus = [(torch.randint(-4, 5, (30, 20), generator=g) / 8).to(dtype) for _ in range(n)]
    taus[0][0, :4] = -0.0
    taus[1][0, :2] = -0.0
    taus[1][1] = -taus[0][1]  # a zero mass from opposite signs
    taus[2][2, 3] = math.inf
    return taus


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [[1.0, 0.5, 2.0], [0.7, -0.4, 1.2], [0.0, 1.0, 1.0]])
@pytest.mark.parametrize("normalize", [True, False])
def test_sign_election_by_arithmetic_is_the_masked_definition(dtype, weights, normalize):
    taus = [t * w for t, w in zip(_taus(dtype), weights)]
    mass = taus[0] + taus[1] + taus[2]
    expected = C._consensus_masked(taus, weights, normalize, mass >= 0)
    assert _same_bits(C._consensus(taus, weights, normalize), expected)
    taus[1][3, 3] = math.nan  # a NaN takes the definition itself
    mass = taus[0] + taus[1] + taus[2]
    assert _same_bits(C._consensus(taus, weights, normalize), C._consensus_masked(taus, weights, normalize, mass >= 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_trim_by_threshold_is_the_masked_trim(dtype, density):
    """Knowing how many entries tie with the k-th magnitude lets every chunk be trimmed by a threshold."""
    tau = _taus(torch.float32)[0].to(dtype)
    tau[4, 5] = -0.0
    chunks = list(tau.float().split(7)) if dtype == torch.bfloat16 else list(tau.split(7))
    value, ties, equal = S._radix_select(lambda: chunks, density)
    assert equal == int((torch.cat(chunks).abs() == value).sum()) and equal >= ties >= 1
    masked = torch.cat([S.MagnitudeTrim(value, ties)(c) for c in chunks])  # counts the ties chunk by chunk
    fast = torch.cat([S.MagnitudeTrim(value, ties, equal)(c) for c in chunks])
    assert _same_bits(fast, masked)
    kept = torch.cat(chunks).abs() >= value
    if ties == equal:  # every tie kept: the trim is |x| >= value, signs (and signed zeros) kept
        assert _same_bits(fast, torch.cat(chunks) * kept)


def test_keep_where_is_torch_where():
    x = torch.tensor([1.5, -2.0, -0.0, 0.0, 3.0, -1e-40])
    mask = torch.tensor([True, False, False, True, False, True])
    assert _same_bits(S.keep_where(mask, x), torch.where(mask, x, 0.0))
    for bad in (math.inf, math.nan):
        y = x.clone()
        y[1] = bad
        assert _same_bits(S.keep_where(mask, y), torch.where(mask, y, 0.0))


def test_dare_mask_is_the_bernoulli_draw_mergekit_makes():
    """torch.rand < p draws what torch.bernoulli(full(p)) draws from the same stream, chunk after chunk."""
    keep, seed = 0.37, 11
    whole = torch.bernoulli(torch.full((50, 9), keep), generator=torch.Generator().manual_seed(seed)).bool()
    drop = S.RandomDrop(seed, keep)
    chunked = torch.cat([drop.mask(c) for c in torch.zeros(50, 9).split(6)])
    assert torch.equal(chunked, whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_finite_check_by_one_sum(dtype):
    big = torch.full((1000,), torch.finfo(dtype).max, dtype=dtype)  # finite, but a float32 sum overflows
    assert writer.all_finite_fast(big) == (dtype == torch.float16)  # the exact check then decides
    writer.check_finite("big", big)
    for bad in (math.nan, math.inf, -math.inf):
        t = torch.ones(64, dtype=dtype)
        t[17] = bad
        assert not writer.all_finite_fast(t)
        with pytest.raises(PaintError, match=r"^refusing to write tensor 'w': it holds 1 NaN or infinite values$"):
            writer.check_finite("w", t)


def test_backlog_keeps_order_bounds_bytes_and_stops_at_the_first_error():
    done, names = [], set()

    def job(i: int) -> None:
        names.add(threading.current_thread().name)
        if i == 3:
            raise OSError("disk full")
        done.append(i)

    log = Backlog("paint-test", limit=2)
    for i in range(3):
        log.submit(job, i, nbytes=1)
    log.wait()
    assert done == [0, 1, 2] and all(n.startswith("paint-test") for n in names)
    with pytest.raises(OSError, match="disk full"):
        for i in range(3, 10):
            log.submit(job, i, nbytes=1)
        log.wait()
    assert done == [0, 1, 2]  # nothing after the failed job ran
    log.close()


def test_writer_writes_behind_and_raises_a_failed_write(tmp_path, monkeypatch):
    sd = {f"t{i}": torch.full((3, 4), float(i)) for i in range(6)}
    out = writer.save_state_dict(sd, tmp_path / "ok")
    assert all(torch.equal(io.load_state_dict(out)[k], v) for k, v in sd.items())
    calls = []

    def failing(self, buf):
        calls.append(1)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.ShardedWriter, "_write_bytes", failing)
    with pytest.raises(OSError, match="No space left"):
        writer.save_state_dict(sd, tmp_path / "full")
    assert calls == [1] and not (tmp_path / "full").exists()


@pytest.fixture()
def files(tmp_path):
    g = torch.Generator().manual_seed(3)
    # "b" follows an odd float16 tensor: an offset that does not suit float32
    base = {"w": torch.randn(64, 33, generator=g), "odd": torch.randn(7, generator=g).half(), "b": torch.randn(5)}
    models = [{k: v + 0.1 for k, v in base.items()} for _ in range(2)]
    paths = [writer.save_state_dict(sd, tmp_path / name) for sd, name in zip([base, *models], ["base", "a", "b"])]
    return paths, base, models


def test_reads_and_hashes_on_their_threads_match_the_files(files, tmp_path):
    paths, base, models = files
    readers = [io.CheckpointReader(p) for p in paths]
    got = reads.InputReads(readers, hashing=True)
    got.start()
    for key in readers[1].infos:
        assert torch.equal(got.read(1, key), models[0][key])
    assert torch.equal(got.read(2, "w", 1, 3), models[1]["w"][1:3])
    digests = got.digests()
    got.check_unchanged()
    got.close()
    assert digests[(paths[1] / io.SAFE_WEIGHTS).resolve()] == io.file_sha256(paths[1] / io.SAFE_WEIGHTS)
    for name in ("ties", "dare_ties", "task_arithmetic"):
        kw = {"method": name, "weights": [0.6, 0.4]}
        streamed = stream.merge_checkpoints(paths[0], paths[1:], tmp_path / f"out-{name}", progress=False, **kw)
        assert streamed.tensors == 3
        merged = io.load_state_dict(tmp_path / f"out-{name}")
        expected = stream.merge_state_dicts(base, models, **kw)
        assert all(_same_bits(merged[k], expected[k]) for k in base)


def test_an_input_changed_while_merging_is_refused(files):
    paths, _, _ = files
    got = reads.InputReads([io.CheckpointReader(p) for p in paths], hashing=True)
    got.start()
    got.read(1, "w")
    path = paths[1] / io.SAFE_WEIGHTS
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # what any write to it does
    with pytest.raises(PaintError, match=r"a/model.safetensors changed while it was being merged"):
        got.check_unchanged()
    got.close()


def test_kept_heap_runs_its_block_and_gives_the_memory_back():
    with heap.kept_heap():
        chunks = [torch.ones(1 << 20) for _ in range(4)]  # 4 MiB each: from the heap while it is kept
        assert sum(float(c.sum()) for c in chunks) == 4 * (1 << 20)
    assert heap.AFTER_TRIM_BYTES == 2 * heap.AFTER_MMAP_BYTES  # glibc's own dynamic setting at its largest


def test_every_svd_of_the_subspace_merges_retries_in_double(monkeypatch):
    """Iso-C, Iso-CTS and TSV-M survive a float32 SVD that does not converge (their factors stay float32)."""
    real = torch.linalg.svd

    def flaky(a, full_matrices=True):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(a, full_matrices=full_matrices)

    taus = [t.float() for t in _taus(torch.float64)]
    taus[2][2, 3] = 0.5
    expected = {"iso_c": subspace.iso_c_delta(taus), "tsv_m": subspace.tsv_m_delta(taus, 1.0)}
    monkeypatch.setattr(torch.linalg, "svd", flaky)
    for name, merged in {"iso_c": subspace.iso_c_delta(taus), "tsv_m": subspace.tsv_m_delta(taus, 1.0)}.items():
        assert merged.dtype == torch.float32
        torch.testing.assert_close(merged, expected[name], atol=1e-5, rtol=0)
    assert subspace.iso_cts_delta(taus, 0.5).dtype == torch.float32
    with pytest.raises(PaintError, match=r"^tensor 'w': an SVD did not converge, in float32 nor float64; exclude it$"):
        monkeypatch.setattr(torch.linalg, "svd", lambda a, full_matrices=True: flaky(a.float()))
        C.subspace_combine(taus[0], taus[1:], [1.0, 1.0], M.get_method("iso_c").parse_params({}), "w", None,
                           merge=lambda t, p: subspace.iso_c_delta(t))  # fmt: skip
