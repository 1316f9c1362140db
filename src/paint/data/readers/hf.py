"""Hugging Face datasets: a local ``save_to_disk`` / parquet / imagefolder directory, or a hub id."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paint.data.readers.common import ReadResult
from paint.errors import PaintError
from paint.utils import sha256_strings


@dataclass(frozen=True)
class HFSplit:
    """A split of a Hugging Face ``datasets.Dataset`` with an image and an integer label column."""

    dataset: Any
    image_column: str
    labels: np.ndarray
    identity: str

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        item = self.dataset[int(index)][self.image_column]
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        if isinstance(item, dict) and item.get("bytes") is not None:
            return Image.open(io.BytesIO(item["bytes"])).convert("RGB")
        if isinstance(item, dict) and item.get("path"):
            with Image.open(item["path"]) as im:
                return im.convert("RGB")
        if isinstance(item, np.ndarray):
            return Image.fromarray(item).convert("RGB")
        raise PaintError(f"{self.identity}: column {self.image_column!r} does not hold images")


_HF_SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def _load_hf(path_or_id: str) -> Any:
    import datasets

    p = Path(path_or_id)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            return datasets.load_from_disk(str(p))
        parquet = sorted(p.rglob("*.parquet"))
        if parquet:
            files: dict[str, list[str]] = {}
            for f in parquet:
                name = next((s for s in _HF_SPLIT_NAMES if f.name.startswith(s) or f.parent.name == s), "train")
                files.setdefault(name, []).append(str(f))
            return datasets.load_dataset("parquet", data_files=files)
        return datasets.load_dataset("imagefolder", data_dir=str(p))
    if p.suffix == ".parquet" and p.is_file():
        return datasets.load_dataset("parquet", data_files={"train": [str(p)]})
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id) and not p.exists():  # a hub id like "user/name"
        try:
            return datasets.load_dataset(path_or_id)
        except Exception as e:
            raise PaintError(
                f"Hugging Face dataset {path_or_id!r} could not be loaded ({type(e).__name__}); "
                "offline? use a local save_to_disk/parquet/imagefolder directory"
            ) from None
    raise PaintError(
        f"{path_or_id}: not a directory, parquet file or hub id; expected a datasets save_to_disk, "
        "parquet or imagefolder directory"
    )


def read_hf(
    path_or_id: str, image_column: str = "image", label_column: str = "label", classnames: Sequence[str] | None = None
) -> ReadResult:
    """A Hugging Face dataset (local ``save_to_disk`` / parquet / imagefolder, or a hub id) with a column mapping."""
    import datasets

    ds = _load_hf(path_or_id)
    if isinstance(ds, datasets.Dataset):
        ds = {"train": ds}
    splits, names = {}, None
    for key, d in ds.items():
        name = _HF_SPLIT_NAMES.get(key)
        if name is None:
            continue
        for col in (image_column, label_column):
            if col not in d.column_names:
                raise PaintError(
                    f"{path_or_id} split {key!r}: no column {col!r} (columns: {', '.join(d.column_names)}); "
                    "set image_column / label_column"
                )
        feat = d.features[label_column]
        if getattr(feat, "names", None):
            names = tuple(feat.names)
        labels = np.asarray(d[label_column])
        if labels.dtype.kind not in "iu":
            vocab = list(classnames) if classnames is not None else sorted(set(labels.tolist()))
            index = {v: i for i, v in enumerate(vocab)}
            if any(v not in index for v in labels.tolist()):
                bad = next(v for v in labels.tolist() if v not in index)
                raise PaintError(f"{path_or_id}: label {bad!r} is not one of the class names")
            labels = np.asarray([index[v] for v in labels.tolist()])
            names = names or tuple(vocab)
        fp = getattr(d, "_fingerprint", None) or sha256_strings(map(str, labels.tolist()))[:16]
        splits[name] = HFSplit(d, image_column, labels.astype(np.int64), f"hf:{path_or_id}:{key}:{fp}")
    if not splits:
        raise PaintError(f"{path_or_id}: no train/validation/test split found (has: {', '.join(ds)})")
    return ReadResult(splits, names)
