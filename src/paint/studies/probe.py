"""Linear probes on frozen image features: the PAINT triage rule, probes with C chosen on validation, k-shot draws.

scikit-learn's logistic regression on L2-normalised features (the ones the zero-shot head scores).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from paint.errors import PaintError

Decision = Literal["patch", "support"]

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)


def triage_decision(probe_accuracy: float, zeroshot_accuracy: float, threshold_points: float = 10.0) -> Decision:
    """PAINT's rule: "patch" when the probe beats zero-shot by more than ``threshold_points``.

    Accuracies are fractions in [0, 1]; the threshold is in points (10 = ten percentage points).
    A gap of exactly the threshold is "support" (the paper says "more than").
    """
    gap_points = 100.0 * (float(probe_accuracy) - float(zeroshot_accuracy))
    return "patch" if gap_points > threshold_points + 1e-9 else "support"


def make_probe(c: float, max_iter: int = 2000, seed: int = 0):
    """A standardise-then-logistic-regression pipeline (multinomial, L2 penalty, lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))


def fit_logistic_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 2000,
    seed: int = 0,
    refit_on_val: bool = True,
) -> tuple[Any, float, dict[float, float]]:
    """Choose ``C`` on validation, then fit the final probe.

    Args:
        train_x: training features (N, D).
        train_y: training labels (N,).
        val_x: validation features (M, D).
        val_y: validation labels (M,).
        cs: regularisation strengths to try (larger = weaker regularisation).
        max_iter: lbfgs iterations.
        seed: solver seed.
        refit_on_val: refit on train + validation with the chosen ``C`` (full probes); k-shot
            probes keep to their k examples per class.

    Returns:
        (fitted probe, chosen C, validation accuracy per C). Ties go to the smaller C.
    """

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    if len(np.unique(train_y)) < 2:
        raise PaintError("a linear probe needs examples of at least two classes in the training split")
    scores: dict[float, float] = {}
    fitted: dict[float, Any] = {}
    # One BLAS thread: these problems are tiny, and multi-threaded BLAS on a busy machine
    # spends its time spinning (measured: 6 fits took 177 s with 2 threads, 15 s with 1).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in cs:
            probe = make_probe(c, max_iter, seed).fit(train_x, train_y)
            scores[float(c)] = float(probe.score(val_x, val_y))
            fitted[float(c)] = probe
        best = max(scores, key=lambda c: (scores[c], -c))
        if not refit_on_val:
            return fitted[best], best, scores
        final = make_probe(best, max_iter, seed).fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]))
    return final, best, scores


def kshot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` examples per class (all of a class that has fewer), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


def zeroshot_accuracy(features: torch.Tensor, head: torch.Tensor, labels: np.ndarray) -> float:
    """Accuracy of the zero-shot head (C, D) on normalised features (N, D)."""
    pred = (features @ head.t().float()).argmax(dim=1).numpy()  # (N,)
    return float((pred == np.asarray(labels)).mean())


def triage_features(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    zeroshot_test: float,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = 3,
    cs: Sequence[float] = DEFAULT_CS,
    threshold: float = 10.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Triage one task from its features: full probe, decision and k-shot curve.

    Args:
        feats: split name ("train", "val", "test") -> features (N, D).
        labels: split name -> labels (N,).
        zeroshot_test: zero-shot test accuracy (fraction).
        shots: k values of the few-shot curve.
        draws: random k-shot draws per k (their mean and standard deviation are reported).
        cs: regularisation grid.
        threshold: decision threshold in points.
        max_iter: lbfgs iterations.
        seed: seed of the k-shot draws.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # see fit_logistic_probe: tiny problems, no BLAS threads
        return _triage_features(feats, labels, zeroshot_test, shots, draws, cs, threshold, max_iter, seed)


def _triage_features(feats, labels, zeroshot_test, shots, draws, cs, threshold, max_iter, seed) -> dict[str, Any]:
    probe, best_c, val_scores = fit_logistic_probe(
        feats["train"], labels["train"], feats["val"], labels["val"], cs, max_iter, seed
    )
    probe_test = float(probe.score(feats["test"], labels["test"]))
    curve = []
    for k in shots:
        accs, cs_chosen = [], []
        for d in range(draws):
            idx = kshot_indices(labels["train"], k, seed * 1000 + 97 * k + d)
            if len(np.unique(labels["train"][idx])) < 2:
                continue
            p, c, _ = fit_logistic_probe(
                feats["train"][idx],
                labels["train"][idx],
                feats["val"],
                labels["val"],
                cs,
                max_iter,
                seed,
                refit_on_val=False,
            )
            accs.append(float(p.score(feats["test"], labels["test"])))
            cs_chosen.append(c)
        curve.append(
            {
                "k": int(k),
                "accuracy": float(np.mean(accs)) if accs else float("nan"),
                "std": float(np.std(accs)) if accs else float("nan"),
                "draws": accs,
                "c": cs_chosen,
            }
        )
    return {
        "zeroshot": float(zeroshot_test),
        "probe": probe_test,
        "gap_points": 100.0 * (probe_test - zeroshot_test),
        "decision": triage_decision(probe_test, zeroshot_test, threshold),
        "c": best_c,
        "val_accuracy_per_c": {str(c): s for c, s in val_scores.items()},
        "kshot": curve,
        "sizes": {s: int(len(labels[s])) for s in ("train", "val", "test")},
    }


# --------------------------------------------------------------------------- reports
