"""Classification metrics beyond accuracy: top-k, per-class accuracy and the most-confused pairs.

A pure function of logits and labels, so ``paint eval`` (and anyone with logits) can report what
a user needs to judge a model on their own data: which classes fail, and what they are taken for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def most_confused(cm: np.ndarray, classnames: Sequence[str], top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` off-diagonal cells by count: true class, predicted class, count, share of the true class."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        out.append(
            {
                "true": classnames[t],
                "predicted": classnames[p],
                "count": int(off[t, p]),
                "fraction_of_true": float(off[t, p] / cm[t].sum()),
            }
        )
    return out


def classification_report(
    logits: torch.Tensor, labels: Sequence[int] | np.ndarray, classnames: Sequence[str], k: int = 5, top_pairs: int = 10
) -> dict[str, Any]:
    """Top-1, top-k, loss, per-class accuracy and the most-confused pairs of one split.

    Args:
        logits: (N, C) scores.
        labels: (N,) true class indices.
        classnames: C names, for the per-class table and the pairs.
        k: the k of top-k (capped at C; reported as ``top{k}`` with the k used).
        top_pairs: how many most-confused (true, predicted) pairs to list.

    Example:
        >>> import torch
        >>> from paint import classification_report
        >>> r = classification_report(torch.tensor([[2.0, 1.0], [2.0, 1.0]]), [0, 1], ["cat", "dog"])
        >>> r["top1"], r["per_class"]["dog"], r["most_confused"][0]["predicted"]
        (0.5, {'accuracy': 0.0, 'n': 1}, 'cat')
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, c = logits.shape
    kk = min(k, c)
    topk = logits.topk(kk, dim=1).indices  # (N, kk)
    pred = topk[:, 0].numpy()
    yn = y.numpy()
    cm = confusion_matrix(pred, yn, c)
    per_class = {}
    for i, name in enumerate(classnames):
        support = int(cm[i].sum())
        per_class[name] = {"accuracy": float(cm[i, i] / support) if support else None, "n": support}
    return {
        "n": int(n),
        "top1": float((topk[:, 0] == y).float().mean()) if n else 0.0,
        "top5": float((topk == y[:, None]).any(dim=1).float().mean()) if n else 0.0,
        "top5_k": kk,
        "loss": float(F.cross_entropy(logits.float(), y)) if n else float("nan"),
        "per_class": per_class,
        "most_confused": most_confused(cm, classnames, top_pairs),
    }


def report_markdown(results: dict[str, dict[str, Any]], split: str, worst: int = 5) -> str:
    """A summary table of every task, then each task's weakest classes and most-confused pairs."""
    lines = [f"| task | {split} top-1 (%) | top-5 (%) | loss | n |", "|---|---|---|---|---|"]
    for name, r in results.items():
        k = "" if r["top5_k"] == 5 else f" (top-{r['top5_k']})"
        lines.append(f"| {name} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f}{k} | {r['loss']:.3f} | {r['n']} |")
    for name, r in results.items():
        scored = [(v["accuracy"], cls, v["n"]) for cls, v in r["per_class"].items() if v["accuracy"] is not None]
        scored.sort()
        if scored:
            weakest = ", ".join(f"{cls} {100 * acc:.0f}% (n={m})" for acc, cls, m in scored[:worst])
            lines.append(f"\n{name}: weakest classes: {weakest}")
        if r["most_confused"]:
            pairs = "; ".join(
                f"{p['true']} -> {p['predicted']} {p['count']}x ({100 * p['fraction_of_true']:.0f}% of {p['true']})"
                for p in r["most_confused"][:worst]
            )
            lines.append(f"{name}: most confused (true -> predicted): {pairs}")
    return "\n".join(lines)
