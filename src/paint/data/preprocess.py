"""CLIP preprocessing in plain PIL + torch (no torchvision), with an on-disk cache.

Images go through CLIP's transform once (shortest side resized with the processor's
``resample``, bicubic for CLIP and SigLIP, then a centre crop) and
are kept as uint8 ``(N, 3, S, S)``; normalisation with the checkpoint's mean and std
happens on the fly per batch, so one decoded copy serves every alpha of a sweep.

With ``cache_dir`` the uint8 array is stored as a ``.npy`` file keyed by the split's
``identity``, the resize and the crop, and later calls memory-map it instead of decoding
again. Changing the resolution changes the key, so a stale array is never reused; a
checksum per image catches a damaged file (:mod:`paint.data.image_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from paint.data.image_cache import cache_path, cached_images
from paint.data.parallel import check_workers, ordered_map
from paint.data.task import ImageSplit, image_source
from paint.errors import PaintError
from paint.progress import progress as tqdm


@dataclass(frozen=True)
class ImageSpec:
    """What a checkpoint's image processor asks for (``bundle.spec``, or :meth:`from_processor`).

    Example:
        >>> from paint import ImageSpec
        >>> spec = ImageSpec(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        >>> spec.resample, spec.key_suffix  # bicubic, as CLIP's processor
        (3, '')
    """

    resize: int  # shortest side after resizing
    crop: int  # square centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    squash: bool = False  # resize the whole image to crop x crop, no crop (SigLIP's processor)
    resample: int = 3  # PIL's filter code, as the processor's ``resample``: 3 bicubic (CLIP, SigLIP), 2 bilinear

    @property
    def key_suffix(self) -> str:
        """What a preprocessing cache key adds to a split's identity for this spec (bicubic crops: nothing)."""
        return ("|squash" if self.squash else "") + ("" if self.resample == 3 else f"|resample{self.resample}")

    @classmethod
    def from_processor(cls, processor) -> "ImageSpec":
        """Read size, crop, resample filter, mean and std from a transformers CLIP (or SigLIP) image processor.

        Honoured: ``size`` (shortest edge, or height x width), ``crop_size``, ``do_center_crop``,
        ``resample``, ``image_mean``, ``image_std``; rescaling by 1/255 is implied. Not honoured (a
        one-line error): ``do_resize: false``, and any ``resample`` that is not a PIL filter code.
        """
        size = processor.size
        sized = isinstance(size, dict) or hasattr(size, "get")
        resize = (size.get("shortest_edge") or size.get("height")) if sized else size
        crop = processor.crop_size
        crop = crop.get("height") if isinstance(crop, dict) or hasattr(crop, "get") else crop
        do_crop = getattr(processor, "do_center_crop", True)
        if not do_crop:
            crop = resize
        # A height x width size and no crop (SigLIP's processor) squashes the whole image to that square.
        squash = bool(sized and not size.get("shortest_edge") and not do_crop)
        if getattr(processor, "do_resize", True) is False:
            raise PaintError("the checkpoint's image processor has do_resize: false; paint needs a fixed input size")
        resample = getattr(processor, "resample", None)
        resample = 3 if resample is None else int(getattr(resample, "value", resample))
        if resample not in (0, 1, 2, 3, 4, 5):
            raise PaintError(f"the image processor's resample {resample!r} is not a PIL filter (0-5)")
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        return cls(int(resize), int(crop), mean, std, squash, resample)


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) with the shortest side at ``resize``, long side truncated as transformers does."""
    if width <= height:
        return resize, max(1, int(resize * height / width))
    return max(1, int(resize * width / height)), resize


def clip_transform(img: Image.Image, resize: int, crop: int, resample: int = 3) -> np.ndarray:
    """CLIP's transform: shortest side -> ``resize`` (``resample``: PIL's filter, 3 = bicubic), centre crop;
    (3, crop, crop) uint8.

    Matches transformers' ``CLIPImageProcessor`` (PIL backend) before rescaling: the crop
    offset is floored like its ``center_crop``, and an image smaller than the crop is
    zero-padded around the centre the same way.
    """
    img = img.convert("RGB")
    w, h = img.size
    nw, nh = resized_size(w, h, resize)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling(resample))
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    if nw < crop or nh < crop:
        # transformers pads with zeros, centring with ceil; rare (resize < crop)
        ph, pw = max(crop, nh), max(crop, nw)
        padded = np.zeros((ph, pw, 3), dtype=np.uint8)
        top, left = -(-(ph - nh) // 2), -(-(pw - nw) // 2)
        padded[top : top + nh, left : left + nw] = arr
        arr, nh, nw = padded, ph, pw
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return np.ascontiguousarray(arr[top : top + crop, left : left + crop].transpose(2, 0, 1))


def squash_transform(img: Image.Image, size: int, resample: int = 3) -> np.ndarray:
    """SigLIP's transform: the whole image resized (``resample``, 3 = bicubic) to ``size`` x ``size``;
    (3, size, size) uint8."""
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling(resample))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def spec_transform(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """One image as the checkpoint's processor would crop and resize it: (3, crop, crop) uint8."""
    if spec.squash:
        return squash_transform(img, spec.crop, spec.resample)
    return clip_transform(img, spec.resize, spec.crop, spec.resample)


def decode_one(split: ImageSplit, spec: ImageSpec, index: int) -> np.ndarray:
    """Image ``index`` of ``split`` through :func:`clip_transform`; a failure names the file.

    Readers check every file at read time (truncated JPEGs included) and skip bad ones, so a
    failure here means the file changed or broke after the task was loaded.
    """
    try:
        return spec_transform(split.image(index), spec)
    except PaintError:
        raise
    except Exception as e:
        raise PaintError(
            f"{image_source(split, index)}: could not be decoded ({type(e).__name__}: {e}); it is image {index} of "
            f"split {split.identity}; remove or replace the file and run again"
        ) from None


def preprocess_array(
    split: ImageSplit,
    spec: ImageSpec,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    num_workers: int | None = None,
) -> np.ndarray:
    """All images of a split through :func:`clip_transform`: uint8 ``(N, 3, crop, crop)``.

    With ``cache_dir`` the result is the cache file's memory map (:class:`numpy.memmap`): pages
    are read when used, and :func:`paint.data.rows.read_rows` reads batches of it without
    keeping the split resident, so a split larger than memory trains and evaluates.

    Args:
        split: the images.
        spec: resize, crop (mean and std are applied later, per batch, by :func:`normalize`).
        cache_dir: if given, the array is cached there as ``.npy`` keyed by the split's
            identity, resize and crop, with a checksum per image (see :mod:`paint.data.image_cache`),
            written atomically, verified and memory-mapped on later calls.
        progress: show a progress bar while decoding.
        num_workers: threads that decode; ``None``: one per core, at most 8, if that is faster on
            the first images; 0 or 1: this thread only. The result is the same bytes whatever the
            number (:mod:`paint.data.parallel`).
    """
    n = len(split)
    decode = partial(decode_one, split, spec)
    check_workers(num_workers)
    if cache_dir is None:
        out = np.empty((n, 3, spec.crop, spec.crop), dtype=np.uint8)
        rows = enumerate(ordered_map(decode, range(n), num_workers))
        for i, row in tqdm(
            rows, desc=f"preprocess {split.identity}", total=n, disable=not progress, unit="img", leave=False
        ):
            out[i] = row
        return out
    identity = f"{split.identity}{spec.key_suffix}"  # another transform, another key
    path = cache_path(cache_dir, identity, spec.resize, spec.crop)
    meta = {"identity": identity, "resize": spec.resize, "crop": spec.crop}
    return cached_images(path, n, spec.crop, decode, meta, progress, num_workers)


def preprocess_split(
    split: ImageSplit,
    spec: ImageSpec,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    num_workers: int | None = None,
) -> torch.Tensor:
    """:func:`preprocess_array` as a tensor (over the cache's memory map when ``cache_dir`` is given).

    Example:
        >>> import numpy as np
        >>> from paint import ImageSpec, preprocess_split
        >>> from paint.data.task import ArraySplit
        >>> split = ArraySplit(np.zeros((2, 40, 50, 3), np.uint8), [0, 1], "my-task/val")
        >>> preprocess_split(split, ImageSpec(32, 32, (0.5,) * 3, (0.5,) * 3)).shape  # uint8 (N, 3, crop, crop)
        torch.Size([2, 3, 32, 32])
    """
    return torch.from_numpy(preprocess_array(split, spec, cache_dir, progress, num_workers))


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` -> float32 normalised pixel values for the vision tower.

    Example:
        >>> import torch
        >>> from paint import normalize
        >>> normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3).max().item()
        1.0
    """
    m = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - m) / s


def augment_batch(
    batch: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Training augmentation on uint8 ``(B, 3, S, S)``: random resized crop and optional flip.

    Each image gets its own crop (area a fraction in ``scale`` of the image, aspect ratio
    log-uniform in ``ratio``), resampled back to ``S x S`` bilinearly, and, if ``flip``, a
    horizontal flip with probability 1/2. Everything is drawn from ``generator``, so the
    same seed gives the same batch. Pass ``flip=False`` for digits, text and traffic signs
    (a catalog entry's ``augment.flip`` says which).

    Returns:
        uint8 ``(B, 3, S, S)``.
    """
    import torch.nn.functional as F

    b, _, h, w = batch.shape
    if b == 0:
        return batch
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)  # (B,)
    log_r = torch.empty(b).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=generator)
    r = torch.exp(log_r)
    # crop width/height as fractions of the image, clipped to fit
    cw = torch.sqrt(area * r).clamp(max=1.0)
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    sx = cw.clone()
    if flip:
        sx = torch.where(torch.rand(b, generator=generator) < 0.5, -sx, sx)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta.to(batch.device), [b, 3, h, w], align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)
