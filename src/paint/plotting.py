"""Figures without global state: every plot of paint is a ``matplotlib.figure.Figure`` drawn off-screen.

No ``matplotlib.use`` and no pyplot: a Figure renders PNGs through the Agg canvas on its own, so
importing paint never changes the backend of the user's session (a notebook keeps its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paint.utils import atomic_path


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A Figure and its axes, as ``plt.subplots`` would return them (``figsize``, ``dpi``, ``squeeze``...)."""
    from matplotlib.figure import Figure

    fig_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi") if k in kwargs}
    fig = Figure(**fig_kw)
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out and write atomically as PNG; every plot of paint goes through here."""
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
