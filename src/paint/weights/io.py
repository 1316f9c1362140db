"""Safe checkpoint reading: lazy safetensors, legacy files without pickle, header and size checks.

Readers accept an HF directory (``model.safetensors`` or sharded with
``model.safetensors.index.json``; legacy ``pytorch_model.bin``), a bare ``.safetensors``
file, or a legacy ``.bin`` / ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)``
only: a file that would need arbitrary pickle is refused and nothing in it runs.

Safetensors tensors are read one at a time with ``safetensors.safe_open``; the file is
opened per read so that its memory map (whose touched pages count as resident memory)
never outlives the tensor. Listing keys, shapes and dtypes only parses the JSON header.

Writing (sharded, streamed) is :mod:`paint.weights.writer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from paint.errors import PaintError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
LEGACY_WEIGHTS = ("pytorch_model.bin", "model.bin", "model.pt")
LEGACY_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DEFAULT_SHARD_BYTES = 2 * 1024**3

# safetensors dtype tags (format spec) <-> torch dtypes
_ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}
_MAX_HEADER = 100 * 1024**2


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor (no data)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorInfo:
        return cls(tuple(t.shape), t.dtype)


# ---------------------------------------------------------------------------- reading


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Keys, shapes and dtypes of a safetensors file (in file order) and its metadata; reads only the header."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise PaintError(f"{p} is not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise PaintError(f"{p} is not a readable safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    items = []
    for key, entry in header.items():
        try:
            tag = entry["dtype"]
            info = TensorInfo(tuple(int(s) for s in entry["shape"]), _ST_TO_TORCH[tag])
            items.append((int(entry["data_offsets"][0]), key, info))
        except KeyError:
            raise PaintError(f"{p}: tensor {key!r} has a malformed header entry or an unsupported dtype") from None
        except (TypeError, ValueError, IndexError):
            raise PaintError(f"{p}: tensor {key!r} has a malformed header entry") from None
    items.sort(key=lambda x: x[0])
    return {k: info for _, k, info in items}, dict(meta)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a legacy checkpoint (also unwraps ``{"state_dict": ...}``)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise PaintError(f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise PaintError(
                f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; save only the model's state dict"
            )
    return dict(obj)


def pickle_refusal_line(exc: BaseException) -> str:
    """torch's one useful line from a refused ``weights_only`` load: the global it would have had to import.

    torch's message is a dozen lines of advice; the line naming the blocked ``GLOBAL`` is the one
    that tells a user what the file contains (its first sentence, without ANSI styling).
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next((ln for ln in lines if "GLOBAL" in ln), next((ln for ln in lines if "nsupported" in ln), None))
    if line is None:
        return lines[0][:160] if lines else "an unsupported global"
    line = line.removeprefix("WeightsUnpickler error:").strip()
    return line.split(". ")[0].rstrip(".")[:200]


def unsafe_pickle_error(path: str | os.PathLike, exc: BaseException) -> PaintError:
    """The one-line error for a file that ``torch.load(weights_only=True)`` refused (nothing in it ran)."""
    return PaintError(
        f"{path} would need arbitrary pickle to load ({pickle_refusal_line(exc)}); refused and nothing in it was "
        "run. Re-save its state dict as safetensors in a trusted environment"
    )


def load_legacy(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.bin`` / ``.pt`` state dict with ``torch.load(weights_only=True)`` only.

    Raises:
        PaintError: the file needs arbitrary pickle (refused; nothing in it ran), is a
            TorchScript archive, or holds something other than a state dict.
    """
    p = Path(path)

    def _load(mmap: bool) -> Any:
        with warnings.catch_warnings():  # our own error below says what to do with TorchScript
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = _load(mmap=True)  # zip-format files map lazily instead of being read whole
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = _load(mmap=False)  # the pre-1.6 format cannot be memory-mapped
    except pickle.UnpicklingError as e:
        raise unsafe_pickle_error(p, e) from None
    except RuntimeError as e:
        if "TorchScript" in str(e):
            raise PaintError(
                f"{p} is a TorchScript archive; paint does not load TorchScript. In a trusted environment "
                "run torch.jit.load(path).state_dict() and save it with safetensors"
            ) from None
        raise PaintError(f"{p} could not be read as a PyTorch state dict ({str(e).splitlines()[0][:200]})") from None
    except (OSError, EOFError) as e:
        raise PaintError(f"{p} could not be read ({e})") from None
    return _unwrap_state_dict(obj, p)


def _check_covered(path: Path, infos: Mapping[str, TensorInfo]) -> None:
    """The file holds exactly the bytes its header promises: a truncated (or padded) file is caught at open.

    The format stores tensors back to back after the header, so the data size is the sum of the
    tensors' sizes; safetensors itself only notices when a reader maps the file, with an error
    that does not name it.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    have = path.stat().st_size - 8 - n
    want = sum(info.nbytes for info in infos.values())
    if have != want:
        what = "truncated" if have < want else "longer than its header says"
        raise PaintError(f"{path} is {what} ({have} of {want} tensor data bytes); re-download or re-create it")


class CheckpointReader:
    """Lazy, read-only view of a checkpoint: keys, shapes and dtypes now, tensor data on demand.

    Args:
        path: HF directory, ``.safetensors`` file, or legacy ``.bin`` / ``.pt`` file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.files: list[Path] = []
        self._where: dict[str, Path] = {}
        self._legacy: dict[str, torch.Tensor] | None = None
        self.infos: dict[str, TensorInfo] = {}
        self._open()

    def _open(self) -> None:
        p = self.path
        if not p.exists():
            raise PaintError(f"checkpoint {p} does not exist")
        if p.is_dir():
            if (p / SAFE_INDEX).is_file():
                self._open_index(p / SAFE_INDEX)
            elif (p / SAFE_WEIGHTS).is_file():
                self._open_safetensors([p / SAFE_WEIGHTS])
            else:
                legacy = [p / n for n in LEGACY_WEIGHTS if (p / n).is_file()]
                if not legacy:
                    raise PaintError(
                        f"{p} has no {SAFE_WEIGHTS}, {SAFE_INDEX} or {LEGACY_WEIGHTS[0]}; is it a model directory?"
                    )
                self._open_legacy(legacy[0])
        elif p.suffix == ".safetensors":
            self._open_safetensors([p])
        elif p.suffix in LEGACY_SUFFIXES:
            self._open_legacy(p)
        else:
            raise PaintError(f"{p}: unknown checkpoint format; expected a directory, .safetensors, .bin or .pt")

    def _open_safetensors(self, files: Sequence[Path]) -> None:
        for f in files:
            infos, _ = read_safetensors_header(f)
            _check_covered(f, infos)
            for k, info in infos.items():
                if k in self.infos:
                    raise PaintError(f"{self.path}: tensor {k!r} appears in more than one shard")
                self.infos[k] = info
                self._where[k] = f
            self.files.append(f)

    def _open_index(self, index: Path) -> None:
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise PaintError(f"{index} is not a valid safetensors index ({e})") from None
        shards = list(dict.fromkeys(weight_map.values()))
        for s in shards:
            if not (index.parent / s).is_file():
                raise PaintError(f"{index} names shard {s}, which is missing")
        self._open_safetensors([index.parent / s for s in shards])
        missing = sorted(set(weight_map) - set(self.infos))
        if missing:
            raise PaintError(f"{index} lists tensor {missing[0]!r}, which is in none of its shards")

    def _open_legacy(self, path: Path) -> None:
        self._legacy = load_legacy(path)
        self.infos = {k: TensorInfo.of(v) for k, v in self._legacy.items()}
        self.files.append(path)

    def keys(self) -> list[str]:
        return list(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def __contains__(self, key: object) -> bool:
        return key in self.infos

    def _check(self, key: str) -> None:
        if key not in self.infos:
            raise PaintError(f"{self.path} has no tensor {key!r}")

    def get(self, key: str) -> torch.Tensor:
        """One tensor's data (the file is opened for this read only)."""
        self._check(key)
        if self._legacy is not None:
            return self._legacy[key]
        with safe_open(str(self._where[key]), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    def get_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` along dim 0 of one tensor, reading only those rows."""
        self._check(key)
        if self._legacy is not None:
            return self._legacy[key][start:stop]
        with safe_open(str(self._where[key]), framework="pt", device="cpu") as f:
            return f.get_slice(key)[start:stop]

    def as_mapping(self) -> LazyStateDict:
        return LazyStateDict(self)


class LazyStateDict(Mapping[str, torch.Tensor]):
    """A read-only ``Mapping`` over a checkpoint that reads a tensor when it is looked up."""

    def __init__(self, reader: CheckpointReader):
        self.reader = reader

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.reader.infos:
            raise KeyError(key)
        return self.reader.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader.infos)

    def __len__(self) -> int:
        return len(self.reader.infos)

    def __contains__(self, key: object) -> bool:  # Mapping's would read the tensor to answer
        return key in self.reader.infos


def open_checkpoint(path: str | os.PathLike) -> CheckpointReader:
    """Open a checkpoint lazily (see :class:`CheckpointReader`)."""
    return CheckpointReader(path)


def list_tensors(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Keys, shapes and dtypes of a checkpoint without reading tensor data (legacy files excepted)."""
    return dict(CheckpointReader(path).infos)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a whole checkpoint into a dict (any format :class:`CheckpointReader` accepts)."""
    reader = CheckpointReader(path)
    return {k: reader.get(k) for k in reader.keys()}


def file_sha256(path: str | os.PathLike, block: int = 16 * 1024**2) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def safetensors_spans(path: str | os.PathLike) -> tuple[int, dict[str, tuple[int, int]]]:
    """Where each tensor's bytes lie in a safetensors file: (data start, key -> absolute [begin, end))."""
    p = Path(path)
    infos, _ = read_safetensors_header(p)  # validates the header; the offsets are read again below
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    start = 8 + n
    return start, {
        k: (start + int(header[k]["data_offsets"][0]), start + int(header[k]["data_offsets"][1])) for k in infos
    }


def check_safetensors_size(path: str | os.PathLike) -> None:
    """Raise :class:`PaintError` (one line naming the file) when a tensor's bytes do not fit in the file.

    Catches truncated downloads and copies before a merge starts, instead of failing mid-merge.
    """
    p = Path(path)
    infos, _ = read_safetensors_header(p)
    start, spans = safetensors_spans(p)
    size = p.stat().st_size
    for key, (begin, end) in spans.items():
        if end - begin != infos[key].nbytes or begin < start:
            raise PaintError(
                f"{p} is malformed: tensor {key!r} has data offsets for {end - begin} bytes but its shape and dtype "
                f"need {infos[key].nbytes}; re-save or re-download it"
            )
        if end > size:
            raise PaintError(
                f"{p} is truncated: tensor {key!r} ends at byte {end} but the file has {size} bytes; "
                "re-download or re-save it"
            )
