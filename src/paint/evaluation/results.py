"""Evaluation: accuracy and mean cross-entropy of a model + head on preprocessed images.

Images arrive as uint8 ``(N, 3, S, S)`` (see :mod:`paint.data.preprocess`); each batch is
normalised on the fly. Results are stored in a JSONL file keyed by (model, alpha, task,
split) so a re-run skips what is already measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from paint.data.preprocess import ImageSpec, normalize
from paint.data.rows import read_rows
from paint.models.families import family_of
from paint.selection.margins import MARGIN, encode_margins, image_margins
from paint.stats import encode_correct
from paint.utils import append_jsonl, json_checksum, read_jsonl_checked, write_jsonl_atomic

log = logging.getLogger(__name__)


def logits_for(model: torch.nn.Module, head: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """The family's logits (B, C) against a zero-shot head (C, D) that already carries the logit scale."""
    family = family_of(model)
    feats = F.normalize(family.image_features(model, pixel_values).float(), dim=-1)  # (B, D)
    return family.logits(model, feats, head)


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    head: torch.Tensor,
    images: torch.Tensor,
    spec: ImageSpec,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits (N, C) for uint8 images (N, 3, S, S).

    Example:
        >>> from paint import predict
        >>> logits = predict(bundle.model, head, images_uint8, bundle.spec)  # doctest: +SKIP
        >>> logits.argmax(dim=1)  # doctest: +SKIP
    """
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        batch = normalize(read_rows(images, slice(i, i + batch_size)).to(device), spec.mean, spec.std)
        out.append(logits_for(model, head, batch).cpu())
    return torch.cat(out) if out else torch.empty(0, head.shape[0])


def metrics_from_logits(logits: torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Accuracy (fraction), mean cross-entropy, count, per-image correctness (``correct``) and margins.

    ``margin`` holds each image's true-class logit minus its best other logit (float16, base64;
    :func:`paint.selection.margins.encode_margins`), whose sign agrees with ``correct``: what
    ``strategy: surrogate`` interpolates along the line to predict accuracies between evaluations.

    Example:
        >>> import torch
        >>> from paint import metrics_from_logits
        >>> m = metrics_from_logits(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), [0, 1, 1])
        >>> m["accuracy"], m["n"]
        (0.6666666666666666, 3)
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    hit = logits.argmax(dim=1) == y
    ok = hit.cpu().numpy()
    return {
        "accuracy": int(hit.sum()) / max(1, len(y)),  # exact: a float32 mean puts a -1.0 point change at -1.000001
        "loss": float(F.cross_entropy(logits.float(), y)),
        "n": int(len(y)),
        "correct": encode_correct(ok),
        MARGIN: encode_margins(image_margins(logits.detach().float().cpu().numpy(), y.numpy()), ok),
    }


def evaluate_split(
    model: torch.nn.Module,
    head: torch.Tensor,
    images: torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    spec: ImageSpec,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and per-image correctness of ``model`` with ``head`` on one split.

    Example:
        ```python
        from paint import evaluate_split

        metrics = evaluate_split(bundle.model, head, images_uint8, labels, bundle.spec)
        metrics["accuracy"], metrics["loss"], metrics["n"]  # a fraction, the mean cross-entropy, the image count
        ```
    """
    model.eval()
    return metrics_from_logits(predict(model, head, images, spec, batch_size), labels)


@dataclass(frozen=True)
class ResultKey:
    model: str
    alpha: float
    task: str
    split: str

    def as_tuple(self) -> tuple[str, float, str, str]:
        return (self.model, round(float(self.alpha), 10), self.task, self.split)


CHECKSUM = "checksum"  # the field of a stored record that holds the SHA-256 of the rest of it


def record_checksum(rec: dict[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON without its checksum field (:func:`paint.utils.json_checksum`)."""
    return json_checksum({k: v for k, v in rec.items() if k != CHECKSUM})


def checksum_ok(rec: dict[str, Any]) -> bool:
    """Whether a stored record is intact: its checksum matches, or it has none (written before checksums)."""
    return CHECKSUM not in rec or rec[CHECKSUM] == record_checksum(rec)


class ResultsStore:
    """Evaluation results in a JSONL file, one record per (model, alpha, task, split).

    Appends are flushed and fsynced, so a crashed sweep resumes where it stopped. Every record
    carries a ``checksum`` (SHA-256 of the rest of it, :func:`record_checksum`), so an edited
    value or a flipped bit is caught; records written before checksums existed have none and
    are trusted as before. On open, lines that cannot be used (a torn line after a kill or a
    full disk, a record without its key fields, a record failing its checksum) are dropped,
    reported in one warning and measured again, and the file is rewritten atomically with
    the valid records only, so it is valid JSON lines again. One process writes a run's store
    (the run directory is locked), so the rewrite races no appender.

    Example:
        >>> from paint import ResultsStore
        >>> from paint.evaluation.results import ResultKey
        >>> store = ResultsStore("runs/demo/results.jsonl")  # doctest: +SKIP
        >>> store.get(ResultKey(line_id, 0.4, "digits", "val"))  # doctest: +SKIP
    """

    KEY_FIELDS = ("model", "alpha", "task", "split")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._records: dict[tuple, dict[str, Any]] = {}
        records, unreadable = read_jsonl_checked(self.path)
        kept, mismatched = [], 0
        for rec in records:
            key = self._key(rec)
            if key is None:
                unreadable += 1
            elif not checksum_ok(rec):
                mismatched += 1
            else:
                kept.append(rec)
                self._records[key] = {k: v for k, v in rec.items() if k != CHECKSUM}
        self.skipped = unreadable + mismatched
        self.mismatched = mismatched
        if self.skipped:
            self._report(unreadable, mismatched)
            write_jsonl_atomic(self.path, kept)

    @classmethod
    def _key(cls, rec: dict[str, Any]) -> tuple | None:
        """The record's key, or None when its key fields are missing or of the wrong type."""
        try:
            return ResultKey(*(rec[f] for f in cls.KEY_FIELDS)).as_tuple()
        except (KeyError, TypeError, ValueError):
            return None

    def _report(self, unreadable: int, mismatched: int) -> None:
        """One warning line for every line dropped on open."""
        parts = [f"{unreadable} unreadable line(s) (torn by a crash or a full disk)"] if unreadable else []
        if mismatched:
            parts.append(f"{mismatched} record(s) failing their checksum (edited, or corrupted on disk)")
        log.warning(
            "%s: skipped %s; they will be measured again, and the file is rewritten without them",
            self.path,
            " and ".join(parts),
        )

    def get(self, key: ResultKey) -> dict[str, Any] | None:
        return self._records.get(key.as_tuple())

    def put(self, key: ResultKey, metrics: dict[str, Any]) -> dict[str, Any]:
        rec = {"model": key.model, "alpha": float(key.alpha), "task": key.task, "split": key.split, **metrics}
        append_jsonl(self.path, {**rec, CHECKSUM: record_checksum(rec)})
        self._records[key.as_tuple()] = rec
        return rec

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())


class MemoryStore:
    """The :class:`ResultsStore` interface without a file (nothing persists)."""

    def __init__(self) -> None:
        self._records: dict[tuple, dict] = {}

    def get(self, key):
        return self._records.get(key.as_tuple())

    def put(self, key, metrics: dict) -> dict:
        rec = {"model": key.model, "alpha": float(key.alpha), "task": key.task, "split": key.split, **metrics}
        self._records[key.as_tuple()] = rec
        return rec
