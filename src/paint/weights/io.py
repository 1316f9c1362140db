"""Safe checkpoint IO: lazy safetensors reading, legacy files without pickle, streamed sharded writing.

Readers accept an HF directory (``model.safetensors`` or sharded with
``model.safetensors.index.json``; legacy ``pytorch_model.bin``), a bare ``.safetensors``
file, or a legacy ``.bin`` / ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)``
only: a file that would need arbitrary pickle is refused and nothing in it runs.

Safetensors tensors are read one at a time with ``safetensors.safe_open``; the file is
opened per read so that its memory map (whose touched pages count as resident memory)
never outlives the tensor. Listing keys, shapes and dtypes only parses the JSON header.

The writer knows every output tensor's name, shape and dtype up front (a merge's output
has the base's layout), so it writes each shard's header first and then streams each
tensor's bytes to disk as soon as it is computed: peak memory is one output tensor, not
one shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from paint.errors import PaintError
from paint.utils import atomic_path

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


# ---------------------------------------------------------------------------- writing


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"500MB"``, ``"2GB"``, ``"1.5GiB"``."""
    if isinstance(size, int):
        value = size
    else:
        s = str(size).strip().upper().replace(" ", "")
        units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
        for unit, mult in units.items():
            if s.endswith(unit):
                try:
                    value = int(float(s[: -len(unit)]) * mult)
                except ValueError:
                    raise PaintError(f"size {size!r} is not a number of bytes like 500MB or 2GB") from None
                break
        else:
            try:
                value = int(s)
            except ValueError:
                raise PaintError(f"size {size!r} is not a number of bytes like 500MB or 2GB") from None
    if value <= 0:
        raise PaintError(f"size {size!r} must be positive")
    return value


def plan_shards(infos: Mapping[str, TensorInfo], max_shard_bytes: int) -> list[list[str]]:
    """Split keys, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, info in infos.items():
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += info.nbytes
    return shards if shards[0] else []


def shard_names(n: int) -> list[str]:
    """HF file names for ``n`` shards."""
    if n <= 1:
        return [SAFE_WEIGHTS]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _header_bytes(keys: Sequence[str], infos: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for k in keys:
        info = infos[k]
        if info.dtype not in _TORCH_TO_ST:
            raise PaintError(f"tensor {k!r} has dtype {info.dtype}, which safetensors cannot store")
        header[k] = {
            "dtype": _TORCH_TO_ST[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so that data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without copying a contiguous one."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class ShardedWriter:
    """Write a known set of tensors, in order, to safetensors shards plus an index file.

    Each shard's header is written when the shard is opened (the layout is known up front),
    then tensor bytes are appended as they come, so nothing is buffered beyond the tensor
    (or row chunk) being written. Use it on a temporary directory and move that into place
    (see :func:`paint.utils.atomic_path`); :func:`save_state_dict` does both.

    Args:
        out_dir: existing directory to write into.
        infos: every tensor to be written, in write order.
        max_shard_bytes: shard size limit (a single larger tensor gets a shard of its own).
        metadata: extra string metadata for each shard header.
        single_file: write exactly this path instead of HF-named shards in ``out_dir``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        infos: Mapping[str, TensorInfo],
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: Mapping[str, str] | None = None,
        single_file: str | os.PathLike | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.infos = dict(infos)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = [list(self.infos)] if single_file is not None else plan_shards(self.infos, max_shard_bytes)
        if single_file is not None:
            self.paths = [Path(single_file)]
        else:
            self.paths = [self.out_dir / n for n in shard_names(len(self.shards))]
        self._order = [k for shard in self.shards for k in shard]
        self._shard_keys = [set(shard) for shard in self.shards]
        self._next = 0
        self._shard = -1
        self._file: Any = None
        self._remaining = 0

    def _open_shard(self, i: int) -> None:
        if self._file is not None:
            self._file.close()
        self._shard = i
        self._file = open(self.paths[i], "wb")
        self._file.write(_header_bytes(self.shards[i], self.infos, self.metadata))

    def write(self, key: str, data: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Write tensor ``key`` (the next in order) from one tensor or consecutive row chunks."""
        if self._next >= len(self._order) or self._order[self._next] != key:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise ValueError(f"writer expected tensor {expected!r} next, got {key!r}")
        info = self.infos[key]
        while self._shard < 0 or key not in self._shard_keys[self._shard]:
            self._open_shard(self._shard + 1)  # shards are filled in order
        chunks = [data] if isinstance(data, torch.Tensor) else data
        written = 0
        for chunk in chunks:
            if chunk.dtype != info.dtype:
                raise ValueError(f"tensor {key!r}: got dtype {chunk.dtype}, planned {info.dtype}")
            if isinstance(data, torch.Tensor) and tuple(chunk.shape) != info.shape:
                raise ValueError(f"tensor {key!r}: got shape {tuple(chunk.shape)}, planned {info.shape}")
            buf = _tensor_bytes(chunk)
            self._file.write(buf)
            written += buf.nbytes
        if written != info.nbytes:
            raise ValueError(f"tensor {key!r}: wrote {written} bytes, planned {info.nbytes}")
        self._next += 1

    def close(self) -> list[Path]:
        """Finish the last shard and write the index (when sharded); return the files written."""
        if self._next != len(self._order):
            self.abort()
            raise ValueError(f"writer closed after {self._next} of {len(self._order)} tensors")
        while self._shard + 1 < len(self.shards):  # shards never written to (an empty state dict)
            self._open_shard(self._shard + 1)
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.shards:  # an empty state dict still gets a valid (empty) file
            self.paths[0].write_bytes(_header_bytes([], {}, self.metadata))
        files = list(self.paths)
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(i.nbytes for i in self.infos.values())},
                "weight_map": {k: self.paths[i].name for i, s in enumerate(self.shards) for k in s},
            }
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            files.append(self.out_dir / SAFE_INDEX)
        return files

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_state_dict_into(
    sd: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[Path]:
    """Write ``sd`` as HF safetensors shards into an existing directory (not atomic by itself)."""
    writer = ShardedWriter(out_dir, {k: TensorInfo.of(v) for k, v in sd.items()}, max_shard_bytes)
    try:
        for k, v in sd.items():
            writer.write(k, v)
    finally:
        writer.abort()
    return writer.close()


def save_state_dict(
    sd: Mapping[str, torch.Tensor], path: str | os.PathLike, max_shard_bytes: int | str = DEFAULT_SHARD_BYTES
) -> Path:
    """Save a state dict atomically: a ``.safetensors`` path gets one file, any other path an HF directory.

    A directory holds ``model.safetensors``, or shards of at most ``max_shard_bytes`` plus
    ``model.safetensors.index.json``; other files already in it are replaced with it.
    """
    target = Path(path)
    limit = parse_size(max_shard_bytes)
    with atomic_path(target) as tmp:
        if target.suffix == ".safetensors":
            writer = ShardedWriter(tmp.parent, {k: TensorInfo.of(v) for k, v in sd.items()}, single_file=tmp)
            try:
                for k, v in sd.items():
                    writer.write(k, v)
            finally:
                writer.abort()
            writer.close()
        else:
            tmp.mkdir()
            write_state_dict_into(sd, tmp, limit)
    return target


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (0o644 under the usual 022).

    Read from ``/proc`` where it can be: setting the umask to find it would briefly change it for
    every thread of the process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_safetensors_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` with the mode other outputs get (not atomic by itself).

    safetensors (0.8) creates its file with mode 0600 whatever the umask, so a model or cache
    written with it could not be read by the group that reads every other output.
    """
    from safetensors.torch import save_file

    out = Path(path)
    save_file(dict(tensors), str(out), metadata=dict(metadata) if metadata else None)
    os.chmod(out, new_file_mode())
    return out
