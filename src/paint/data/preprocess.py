"""CLIP preprocessing in plain PIL + torch (no torchvision).

Images go through CLIP's transform once (shortest side resized bicubic, centre crop) and
are kept as uint8 ``(N, 3, S, S)``; normalisation with the checkpoint's mean and std
happens on the fly per batch, so one decoded copy serves every alpha of a sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from paint.data.task import ImageSplit


@dataclass(frozen=True)
class ImageSpec:
    """What a checkpoint's image processor asks for."""

    resize: int  # shortest side after resizing
    crop: int  # square centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor) -> "ImageSpec":
        """Read size, crop, mean and std from a transformers CLIPImageProcessor."""
        size = processor.size
        resize = size.get("shortest_edge") or size.get("height") if isinstance(size, dict) else size
        crop = processor.crop_size
        crop = crop.get("height") if isinstance(crop, dict) else crop
        if not getattr(processor, "do_center_crop", True):
            crop = resize
        return cls(int(resize), int(crop), tuple(processor.image_mean), tuple(processor.image_std))


def clip_transform(img: Image.Image, resize: int, crop: int) -> np.ndarray:
    """CLIP's transform: shortest side -> ``resize`` (bicubic), centre crop; (3, crop, crop) uint8."""
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = resize, max(1, int(resize * h / w))
    else:
        nw, nh = max(1, int(resize * w / h)), resize
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - crop) / 2.0))
    top = int(round((nh - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def preprocess_split(split: ImageSplit, spec: ImageSpec, cache_dir=None, progress: bool = False) -> torch.Tensor:
    """All images of a split through :func:`clip_transform`: uint8 ``(N, 3, crop, crop)``."""
    out = np.empty((len(split), 3, spec.crop, spec.crop), dtype=np.uint8)
    for i in range(len(split)):
        out[i] = clip_transform(split.image(i), spec.resize, spec.crop)
    return torch.from_numpy(out)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` -> float32 normalised pixel values for the vision tower."""
    m = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - m) / s
