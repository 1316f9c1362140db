"""Saving and resuming a training run: one checkpoint directory, replaced atomically at every epoch end.

:class:`CheckpointSaver` is what the loop holds (timm's ``CheckpointSaver`` is the model): it
answers "is there a run to continue, and from where" before the first step, and writes the
epoch's checkpoint after the last one. Layout of ``<run>/checkpoint``, written by rank 0 only::

    trainable.safetensors   the trained tensors only (frozen ones are never written)
    optimizer.safetensors   AdamW state tensors, flattened as state.<param>.<name>
                            (absent under FSDP: its sharded state is not saved)
    state.json              epoch, step, history, param groups, scheduler state, fingerprint, done
    checksums.json          SHA-256 of each file above, verified before anything reads them
                            (flipped or truncated bytes are refused instead of trained on)

The readers of a finished run's weights (``paint interpolate --run``, ``paint metrics``) go
through :func:`load_checkpoint_file`, verified the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from paint.errors import PaintError
from paint.utils import atomic_path, sha256_file

CHECKSUMS = "checksums.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
RESUME_REMEDY = "delete {path} to start training over"
READ_REMEDY = "fine-tune again (a new paint patch run) to rebuild it"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumed:
    """Where a checkpoint left its run: the last finished epoch, the step count, and what to load."""

    epoch: int
    step: int
    history: list[dict[str, Any]]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None  # a torch optimizer state dict; None: the run saved none (FSDP)
    scheduler: dict[str, Any]


class CheckpointSaver:
    """The epoch-end checkpoint of one run in ``<directory>/checkpoint`` (no directory: nothing is saved).

    Args:
        directory: the run's training directory, or None for a run without checkpoints.
        fingerprint: identifies the run's inputs; a checkpoint of another run is refused.
        writer: whether this process writes (rank 0); every rank reads.
        desc: the run's label in warnings.

    Example:
        >>> saver = CheckpointSaver(Path("runs/ft/finetune"), fingerprint="abc")  # doctest: +SKIP
        >>> resumed = saver.resume(allowed=True)  # None on a fresh run  # doctest: +SKIP
        >>> saver.save(epoch, step, history, done, trainable, optimizer, scheduler)  # doctest: +SKIP
    """

    def __init__(self, directory: Path | None, fingerprint: str, writer: bool = True, desc: str = "train"):
        self.path = directory / "checkpoint" if directory is not None else None
        self.fingerprint, self.writer, self.desc = fingerprint, writer, desc

    def resume(self, allowed: bool) -> Resumed | None:
        """The checkpoint to continue from, verified; None when there is none.

        Raises:
            PaintError: a checkpoint exists and ``allowed`` is False, or it was made by another run.
        """
        path = self.path
        if path is None or not (path / STATE).exists():
            return None
        if not allowed:
            raise PaintError(
                f"{path} already holds a checkpoint; pass --resume to continue it or use a new output directory"
            )
        trainable, opt_tensors, state = load_checkpoint(path)
        if state.get("fingerprint") != self.fingerprint:
            raise PaintError(
                f"the checkpoint in {path} was made by a different run (config or data changed); "
                "use a new output directory"
            )
        optimizer = None
        if state.get("optimizer") is not None:
            optimizer = _unflatten_optimizer_state(opt_tensors, state["optimizer"])
        elif self.writer:
            log.warning(
                "%s: the checkpoint holds no optimizer state (FSDP run); AdamW restarts from zero moments", self.desc
            )
        return Resumed(state["epoch"], state["step"], state["history"], trainable, optimizer, state["scheduler"])

    def save(
        self,
        epoch: int,
        step: int,
        history: list[dict[str, Any]],
        done: bool,
        trainable: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
    ) -> None:
        """Write the epoch's checkpoint (the writer only; ``optimizer=None``: no optimizer state)."""
        if self.path is None or not self.writer:
            return
        state = {"epoch": epoch, "step": step, "history": history, "fingerprint": self.fingerprint, "done": done}
        save_checkpoint(self.path, trainable, optimizer, scheduler, state)


def _flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Write the checkpoint directory atomically (a crash keeps the previous one).

    ``optimizer=None`` writes no optimizer state (FSDP runs); a resume then restarts AdamW.
    """
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE))
        opt_meta = None
        if optimizer is not None:
            opt_tensors, opt_meta = _flatten_optimizer_state(optimizer.state_dict())
            save_file(opt_tensors, str(tmp / OPTIMIZER))
        full = dict(state, optimizer=opt_meta, scheduler=scheduler.state_dict())
        (tmp / STATE).write_text(json.dumps(full, indent=1, default=float))
        sums = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=1))


def _recorded_sums(path: Path, remedy: str) -> dict[str, str] | None:
    """The SHA-256 of each file recorded in ``checksums.json`` (None: a checkpoint from before checksums)."""
    sums_path = path / CHECKSUMS
    if not sums_path.exists():
        log.warning("%s has no %s (written by an older paint): its contents are not verified", path, CHECKSUMS)
        return None
    try:
        sums = json.loads(sums_path.read_text())["sha256"]
        assert isinstance(sums, dict) and STATE in sums and TRAINABLE in sums
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise PaintError(f"checkpoint {path} is damaged ({CHECKSUMS} is unreadable); {remedy}") from None
    return sums


def verify_checkpoint(path: Path, names: Iterable[str] | None = None, remedy: str = RESUME_REMEDY) -> None:
    """Refuse a checkpoint whose files differ from the hashes stored when it was written.

    Args:
        path: the checkpoint directory.
        names: the files about to be read (default: every recorded file).
        remedy: what the one-line error tells the user to do; ``{path}`` is the checkpoint.

    A checkpoint from before checksums existed is accepted with a warning.
    """
    remedy = remedy.format(path=path)
    sums = _recorded_sums(path, remedy)
    if sums is None:
        return
    for name in sums if names is None else names:
        f = path / name
        if name not in sums:
            raise PaintError(f"checkpoint {path} is damaged ({name} has no recorded checksum); {remedy}")
        if not f.is_file():
            raise PaintError(f"checkpoint {path} is damaged ({name} is missing); {remedy}")
        if sha256_file(f) != sums[name]:
            raise PaintError(
                f"checkpoint file {f} is damaged (its SHA-256 differs from the one recorded when it was written); "
                f"{remedy}"
            )


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a directory written by :func:`save_checkpoint` (with or without checksums)."""
    return (path / CHECKSUMS).is_file() or (path / STATE).is_file()


def load_checkpoint_file(file: Path, remedy: str = READ_REMEDY) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, verified first when it lies in a checkpoint directory.

    Every reader of a finished run's checkpoint (``paint interpolate --run``, ``paint metrics``)
    goes through this (a resume through :func:`load_checkpoint`): a flipped or truncated byte is a
    one-line :class:`PaintError` naming the file, never wrong weights. A file outside a checkpoint
    has no recorded hash; it is read as it is, and an unreadable one is refused with one line too.
    """
    if is_checkpoint(file.parent):
        verify_checkpoint(file.parent, [file.name], remedy)
    try:
        return load_file(str(file))
    except (OSError, ValueError, SafetensorError) as e:
        raise PaintError(f"cannot read {file}: {str(e).splitlines()[0]}; {remedy.format(path=file.parent)}") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Return (trainable tensors, optimizer tensors (empty if none were saved), state), verified first."""
    verify_checkpoint(path)
    try:
        state = json.loads((path / STATE).read_text())
        trainable = load_file(str(path / TRAINABLE))
        opt = load_file(str(path / OPTIMIZER)) if state.get("optimizer") is not None else {}
    except (OSError, ValueError, SafetensorError) as e:
        raise PaintError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}; delete it to start over") from e
    return trainable, opt, state
