"""CLIP preprocessing: parity with transformers, the on-disk cache, augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from paint.data.image_cache import cache_path
from paint.data.preprocess import (
    ImageSpec,
    augment_batch,
    clip_transform,
    normalize,
    preprocess_split,
    spec_transform,
)
from paint.data.task import ArraySplit


def _pil_processor(**kw):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kw)


def _random_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    # smooth gradients + noise: bicubic overshoot and rounding both get exercised
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(1, w - 1), yy * 255 / max(1, h - 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(-40, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("resize,crop", [(224, 224), (40, 32)])
def test_clip_transform_matches_transformers_within_one_level(resize, crop):
    proc = _pil_processor(size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop})
    spec = ImageSpec.from_processor(proc)
    assert (spec.resize, spec.crop) == (resize, crop)
    rng = np.random.default_rng(0)
    # portrait, landscape, square, odd sizes, smaller and larger than the target
    sizes = [(301, 157), (157, 301), (64, 64), (33, 97), (97, 33), (500, 233), (225, 224), (19, 23)]
    sizes += [tuple(int(v) for v in rng.integers(17, 400, size=2)) for _ in range(4)]
    std = torch.tensor(spec.std).view(3, 1, 1)
    for h, w in sizes:
        img = _random_image(rng, h, w)
        ours = normalize(torch.from_numpy(clip_transform(img, spec.resize, spec.crop))[None], spec.mean, spec.std)[0]
        ref = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]))
        assert ours.shape == ref.shape == (3, crop, crop), (h, w)
        err = ((ours - ref).abs() * std).max().item()  # back in [0, 1] pixel units
        assert err <= 1 / 255 + 1e-5, f"{h}x{w}: max difference {err * 255:.2f}/255"


def test_clip_transform_output_is_uint8_chw():
    out = clip_transform(Image.new("L", (50, 30), color=7), 16, 16)
    assert out.dtype == np.uint8 and out.shape == (3, 16, 16) and int(out.max()) == 7


@dataclass
class CountingSplit:
    """An ArraySplit that counts image() calls, to see whether the cache decodes again."""

    inner: ArraySplit
    calls: list = field(default_factory=list)

    @property
    def identity(self) -> str:
        return self.inner.identity

    @property
    def labels(self) -> np.ndarray:
        return self.inner.labels

    def __len__(self) -> int:
        return len(self.inner)

    def image(self, i: int) -> Image.Image:
        self.calls.append(i)
        return self.inner.image(i)


def _split(n: int = 6, identity: str = "test/split-a") -> CountingSplit:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 20, 28, 3), dtype=np.uint8)
    return CountingSplit(ArraySplit(images, np.arange(n) % 3, identity))


SPEC = ImageSpec(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_cache_is_reused_on_second_pass(tmp_path):
    split = _split()
    first = preprocess_split(split, SPEC, cache_dir=tmp_path, progress=True)
    assert len(split.calls) == len(split)
    second = preprocess_split(split, SPEC, cache_dir=tmp_path)
    assert len(split.calls) == len(split), "second pass decoded images again"
    assert torch.equal(first, second)
    assert torch.equal(second, preprocess_split(_split(), SPEC))  # same as the uncached path
    assert cache_path(tmp_path, split.identity, 16, 16).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    second[0, 0, 0, 0] = 0  # copy-on-write map: writing does not touch the file
    assert torch.equal(first[1:], preprocess_split(split, SPEC, cache_dir=tmp_path)[1:])


def test_cache_invalidated_when_resolution_or_identity_changes(tmp_path):
    split = _split()
    preprocess_split(split, SPEC, cache_dir=tmp_path)
    n = len(split)
    bigger = ImageSpec(24, 20, SPEC.mean, SPEC.std)
    out = preprocess_split(split, bigger, cache_dir=tmp_path)
    assert out.shape == (n, 3, 20, 20) and len(split.calls) == 2 * n
    other = _split(identity="test/split-b")  # new content -> new identity -> new entry
    preprocess_split(other, SPEC, cache_dir=tmp_path)
    assert len(other.calls) == n
    # a damaged cache file (wrong shape) is rebuilt, not trusted
    path = cache_path(tmp_path, split.identity, 16, 16)
    np.save(path, np.zeros((1, 3, 16, 16), dtype=np.uint8))
    again = preprocess_split(split, SPEC, cache_dir=tmp_path)
    assert again.shape == (n, 3, 16, 16) and len(split.calls) == 3 * n


def test_augment_is_seeded_and_keeps_shape():
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, size=(5, 3, 16, 16), dtype=np.uint8))
    a = augment_batch(batch, torch.Generator().manual_seed(3))
    b = augment_batch(batch, torch.Generator().manual_seed(3))
    c = augment_batch(batch, torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == batch.shape
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_full_crop_is_identity_or_mirror():
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, size=(16, 3, 8, 8), dtype=np.uint8))
    g = torch.Generator().manual_seed(0)
    same = augment_batch(batch, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.equal(same, batch)
    flipped = augment_batch(batch, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    kinds = []
    for x, y in zip(batch, flipped):
        assert torch.equal(y, x) or torch.equal(y, x.flip(-1))
        kinds.append(torch.equal(y, x))
    assert 0 < sum(kinds) < len(kinds), "flip should hit some images and not others"


@pytest.mark.parametrize("resample", [2, 3])  # bilinear, bicubic (PIL codes, as transformers' PILImageResampling)
def test_preprocessing_follows_the_processors_resample_filter(resample, tmp_path):
    proc = _pil_processor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=resample)
    spec = ImageSpec.from_processor(proc)
    assert spec.resample == resample
    rng = np.random.default_rng(1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    worst_other = 0.0
    for h, w in [(301, 157), (97, 33), (64, 64), (120, 200)]:
        img = _random_image(rng, h, w)
        ref = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]))
        ours = normalize(torch.from_numpy(spec_transform(img, spec))[None], spec.mean, spec.std)[0]
        assert ((ours - ref).abs() * std).max().item() <= 1 / 255 + 1e-5, f"{h}x{w}"
        other = clip_transform(img, spec.resize, spec.crop, 5 - resample)  # the other filter
        other_n = normalize(torch.from_numpy(other)[None], spec.mean, spec.std)[0]
        worst_other = max(worst_other, ((other_n - ref).abs() * std).max().item())
    assert worst_other > 3 / 255  # the filter matters: the other one is measurably off
    # the cache keeps bilinear and bicubic crops apart (the old bicubic keys are unchanged)
    split = ArraySplit(np.asarray(rng.integers(0, 255, (2, 50, 60, 3)), dtype=np.uint8), [0, 1], "toy/val")
    a = preprocess_split(split, spec, cache_dir=tmp_path)
    b = preprocess_split(split, ImageSpec(spec.resize, spec.crop, spec.mean, spec.std, False, 5 - resample), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not torch.equal(a, b)
