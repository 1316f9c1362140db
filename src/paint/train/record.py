"""What a training run records: its result, the losses of each epoch (read on the host once per log
interval, not per step), and the optional tracker (TensorBoard through Accelerate)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from paint.errors import PaintError

TRACKER_DIR = "tensorboard"  # <training dir>/tensorboard: the event files TensorBoard reads


@dataclass
class FitResult:
    """A run's record; ``runtime`` is what it did (device, resolved precision, tf32, checkpointing, compile)."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    resumed_from_epoch: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)


class EpochLosses:
    """One epoch's losses, kept on the device and read on the host every ``log_every`` steps and at its end.

    A read is the step loop's one host sync (and, with several ranks, its one collective): a
    non-finite loss on any rank stops every rank at the first such step with one line; the finite
    ones go to the tracker (one point per step) and the progress bar.
    """

    def __init__(self, acc: Accelerator, bar: Any, epoch: int, step: int, desc: str, lr: float):
        self.acc, self.bar, self.epoch, self.desc, self.lr = acc, bar, epoch, desc, lr
        self.first = step + 1  # the step number of the first loss not yet read
        self.losses: list[torch.Tensor] = []  # scalars on the device
        self.lrs: list[float] = []
        self.total, self.count = 0.0, 0

    @property
    def pending(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, lr: float) -> None:
        self.losses.append(loss)
        self.lrs.append(lr)

    def read(self) -> None:
        """Bring the pending losses to the host; raise :class:`PaintError` at the first non-finite one."""
        if not self.losses:
            return
        values = torch.stack(self.losses)  # (k,)
        bad = (~torch.isfinite(values)).float()
        if self.acc.num_processes > 1:  # every rank stops at the same step
            bad = self.acc.reduce(bad, reduction="sum")
        host, bad_at = values.tolist(), bad.nonzero().flatten().tolist()
        if bad_at:
            self.bar.close()
            raise PaintError(
                f"{self.desc}: the loss became {host[bad_at[0]]} at epoch {self.epoch}, step {self.first + bad_at[0]}; "
                f"lower the learning rate (lr={self.lr:g}) or check the data"
            )
        for i, (value, lr) in enumerate(zip(host, self.lrs)):
            self.total += value
            self.count += 1
            if self.acc.trackers:
                self.acc.log({"train/loss": value, "train/lr": lr}, step=self.first + i)
        self.bar.set_postfix(epoch=self.epoch, loss=f"{self.total / self.count:.4f}")
        self.first += len(host)
        self.losses, self.lrs = [], []

    def mean(self) -> float:
        """The epoch's mean loss over every rank's batches, so the history is the same on all of them."""
        self.read()
        sums = self.acc.reduce(torch.tensor([self.total, float(self.count)], device=self.acc.device), reduction="sum")
        return float(sums[0]) / max(1.0, float(sums[1]))


def log_epoch(acc: Accelerator, record: dict[str, Any], step: int) -> None:
    """The epoch's numbers (mean loss, the callback's validation accuracies) to the tracker, if any."""
    if acc.trackers:
        values = {f"epoch/{k}": float(v) for k, v in record.items() if k not in ("epoch", "step")}
        acc.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)


def check_tracker(name: str | None) -> None:
    """A one-line error when the tracker's package is missing (before the first step)."""
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (optional: only for log_with: tensorboard)
        except ImportError:
            raise PaintError(
                "finetune.log_with: tensorboard needs the tensorboard package: pip install 'paint[tensorboard]'"
            ) from None
