"""A contact sheet of the offline world: samples of every kind of image with their captions.

    python -m paint.world.sheet [OUT.png] [--seed N]

writes ``docs/world_contact_sheet.png`` by default (the README shows it).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from paint.plotting import new_figure, save_figure
from paint.world import render as R
from paint.world.corpus import corpus_pair
from paint.world.tasks import world_task

ROWS: tuple[tuple[str, str], ...] = (
    ("shapes", "one shape, any colour and background"),
    ("crisp digits", "digits in pretraining fonts"),
    ("bold digits", "thick strokes"),
    ("scanned digits", "8x8, 17 grey levels, like the scans"),
    ("held-out fonts", "novel-font-digits: fonts and slant never in the corpus"),
    ("words", "written text, captioned as text or as the thing it names"),
    ("labelled shapes", "a shape with a word on it"),
    ("counting", "1 to 10 objects, count in the caption"),
)


def _row_of(pair) -> str | None:
    kind, a = pair.kind, pair.attributes
    if kind == "shape":
        return "shapes"
    if kind == "digit":
        return {"crisp": "crisp digits", "bold": "bold digits"}.get(a["style"], "scanned digits")
    if kind == "word":
        return "labelled shapes" if a["shape"] else "words"
    if kind == "count":
        return "counting"
    return None


def sample_rows(seed: int = 0, per_row: int = 8, max_pairs: int = 5000) -> dict[str, list[tuple[Image.Image, str]]]:
    """Row title -> (image, caption) samples, taken in corpus order (deterministic by seed)."""

    rows: dict[str, list[tuple[Image.Image, str]]] = {title: [] for title, _ in ROWS}
    for i in range(max_pairs):
        pair = corpus_pair(seed, i)
        row = _row_of(pair)
        if row is not None and len(rows[row]) < per_row:
            rows[row].append((pair.image, pair.caption))
        if all(len(v) >= per_row for k, v in rows.items() if k != "held-out fonts"):
            break
    novel = world_task("novel-font-digits", seed=seed).split("test")
    rows["held-out fonts"] = [(novel.image(i), f"(task image) {int(novel.labels[i])}") for i in range(per_row)]
    return rows


def contact_sheet(path: str | Path, seed: int = 0, per_row: int = 8) -> Path:
    """Draw :func:`sample_rows` as a grid of images with captions and write a PNG atomically."""

    rows = sample_rows(seed, per_row)
    fig, axes = new_figure(len(ROWS), per_row, figsize=(per_row * 1.55, len(ROWS) * 1.9), dpi=110)
    for r, (title, note) in enumerate(ROWS):
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(rows[title]):
                img, cap = rows[title][c]
                ax.imshow(np.asarray(img), interpolation="nearest")
                ax.set_xlabel("\n".join(textwrap.wrap(cap, 22)[:3]), fontsize=6)
            if c == 0:
                ax.set_ylabel("\n".join([title, *textwrap.wrap(f"({note})", 20)]), fontsize=7)
    fig.suptitle(f"paint's offline world (seed {seed}): {R.SIZE}x{R.SIZE} images and their captions", fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paint.world.sheet", description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="docs/world_contact_sheet.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(contact_sheet(args.out, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
