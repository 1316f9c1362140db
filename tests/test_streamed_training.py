"""Training and evaluation read the preprocessing cache a batch at a time instead of concatenating it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from paint.data.preprocess import ImageSpec, preprocess_array, preprocess_split
from paint.data.rows import cache_file, read_rows
from paint.data.task import ArraySplit
from paint.train.data import TrainingBatches, TrainingSet, make_loader_factory

SPEC = ImageSpec(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _split(n: int, seed: int, name: str) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n), name)


def _sets(tmp_path, sizes=(37, 23)) -> list[TrainingSet]:
    out = []
    for i, n in enumerate(sizes):
        split = _split(n, i, f"task{i}")
        images = preprocess_array(split, SPEC, cache_dir=tmp_path)
        out.append(TrainingSet(f"task{i}", images, np.asarray(split.labels), torch.zeros(3, 4)))
    return out


def test_the_cache_comes_back_as_a_whole_file_memory_map(tmp_path):
    images = preprocess_array(_split(10, 0, "a"), SPEC, cache_dir=tmp_path)
    assert cache_file(images) is not None and cache_file(images).endswith(".npy")
    assert cache_file(images[2:5]) is None  # a view is read through its own indexing
    assert cache_file(preprocess_array(_split(10, 0, "a"), SPEC)) is None  # uncached: plain memory


def test_read_rows_gives_the_rows_asked_for_in_the_order_asked(tmp_path):
    images = preprocess_array(_split(20, 0, "a"), SPEC, cache_dir=tmp_path)
    truth = np.array(images)
    idx = np.array([7, 3, 19, 3, 0])
    assert torch.equal(read_rows(images, idx), torch.from_numpy(truth[idx]))
    assert torch.equal(read_rows(images, slice(4, 9)), torch.from_numpy(truth[4:9]))
    assert torch.equal(read_rows(torch.from_numpy(truth), idx), torch.from_numpy(truth[idx]))
    out = read_rows(images, idx)
    out.zero_()  # the batch owns its memory: writing to it leaves the cache as it was
    assert np.array_equal(np.array(images), truth)


def test_read_rows_refuses_a_cache_file_replaced_under_it(tmp_path):
    images = preprocess_array(_split(20, 0, "a"), SPEC, cache_dir=tmp_path)
    np.save(cache_file(images), np.zeros((3, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"now holds \(3, 3, 8, 8\), expected \(20, 3, 8, 8\)"):
        read_rows(images, np.array([0]))


def test_streamed_loader_yields_the_batches_of_the_concatenated_one(tmp_path):
    """Same shuffle, same rows, same task ids as the former torch.cat + TensorDataset loader: results hold."""
    sets = _sets(tmp_path)
    assert all(cache_file(s.images) for s in sets)
    images = torch.cat([torch.from_numpy(np.array(s.images)) for s in sets])
    labels = torch.as_tensor(np.concatenate([s.labels for s in sets]), dtype=torch.long)
    tasks = torch.cat([torch.full((len(s.labels),), i) for i, s in enumerate(sets)])
    make_loader = make_loader_factory(sets, batch_size=16, seed=3)
    for epoch in (0, 1):
        g = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        old = DataLoader(TensorDataset(images, labels, tasks), batch_size=16, shuffle=True, generator=g)
        new = list(make_loader(epoch))
        assert len(new) == len(old) == 4
        for (xi, yi, ti), (xo, yo, to) in zip(new, old):
            assert torch.equal(xi, xo) and torch.equal(yi, yo) and torch.equal(ti, to)


def test_training_batches_never_hold_the_whole_set(tmp_path, monkeypatch):
    """Every read is one batch of rows: the dataset keeps no image array of its own."""
    sets = _sets(tmp_path, sizes=(50,))
    reads = []
    real = read_rows

    def spy(images, index):
        reads.append(len(np.arange(len(images))[index]))
        return real(images, index)

    monkeypatch.setattr("paint.train.data.read_rows", spy)
    ds = TrainingBatches(sets)
    assert not any(isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 4 for v in vars(ds).values())
    batches = list(make_loader_factory(sets, batch_size=16, seed=0)(0))
    assert sum(len(b[0]) for b in batches) == 50
    assert reads == [16, 16, 16, 2]


def test_preprocess_split_is_the_tensor_of_the_array(tmp_path):
    split = _split(9, 1, "b")
    assert torch.equal(
        preprocess_split(split, SPEC, cache_dir=tmp_path), torch.from_numpy(np.array(preprocess_array(split, SPEC)))
    )


def test_loader_workers_change_nothing_but_who_reads(tmp_path):
    sets = _sets(tmp_path)
    serial = list(make_loader_factory(sets, batch_size=16, seed=5)(1))
    parallel = list(make_loader_factory(sets, batch_size=16, seed=5, workers=2)(1))
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_pickled_dataset_carries_cache_paths_not_images(tmp_path):
    """What a spawned loader worker receives: the path of each cache file, reopened on arrival."""
    import pickle

    sets = _sets(tmp_path, sizes=(200,))
    ds = TrainingBatches(sets)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000 < sets[0].images.nbytes  # 200 images of 3x8x8 would be 38 KB
    back = pickle.loads(blob)
    assert cache_file(back.images[0]) == cache_file(sets[0].images)
    assert all(torch.equal(x, y) for x, y in zip(back.__getitems__([5, 1, 99]), ds.__getitems__([5, 1, 99])))


def test_loader_workers_default_to_none_on_a_cpu_and_a_few_on_a_gpu():
    from paint.train.data import loader_workers

    assert loader_workers(None, on_gpu=False) == 0
    assert 1 <= loader_workers(None, on_gpu=True) <= 4
    assert loader_workers(3, on_gpu=False) == 3


def test_the_frozen_heads_go_to_the_device_once():
    from paint.train.recipes.base import FrozenHeadLoss

    loss = FrozenHeadLoss([torch.randn(3, 4), torch.randn(2, 4)], SPEC, 0.0)
    first = loss.heads_on(torch.device("cpu"))
    assert loss.heads_on(torch.device("cpu")) is first  # the same tensors: no copy at the next step
    assert all(torch.equal(a, b) for a, b in zip(first, loss.heads))


def test_loader_workers_do_not_change_the_fingerprint_or_block_a_resume():
    from paint.pipeline.rundir import DEFAULT_IGNORED, config_differences
    from paint.train.recipes.config import FinetuneConfig

    a, b = FinetuneConfig(), FinetuneConfig(loader_workers=4)
    assert a.identity() == b.identity() and FinetuneConfig(lr=2e-5).identity() != a.identity()
    old = {"finetune": a.model_dump(mode="json"), "seed": 0}
    new = {"finetune": b.model_dump(mode="json"), "seed": 0}
    assert config_differences(old, new, DEFAULT_IGNORED) == []
    assert config_differences(old, new) == [("finetune.loader_workers", None, 4)]


def test_study_fingerprints_ignore_what_only_changes_speed():
    from paint.pipeline.run import config_identity
    from paint.studies.counting import CountingConfig

    base = CountingConfig(output_dir="x")
    faster = base.model_copy(
        update={"num_workers": 4, "finetune": base.finetune.model_copy(update={"loader_workers": 2})}
    )
    other = base.model_copy(update={"finetune": base.finetune.model_copy(update={"lr": 1e-3})})
    assert config_identity(faster) == config_identity(base) != config_identity(other)
