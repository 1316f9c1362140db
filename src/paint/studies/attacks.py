"""Typographic attacks as data: a misleading class name written on images, in the paper's file convention.

- :func:`attack_texts` and :class:`AttackedSplit`: a seeded choice of a *different* class per
  image and a lazily rendered attacked view of any split (the word drawn by
  :func:`paint.world.lettering.render_text`; pixels a pure function of image, word, style, seed).
- :func:`write_attacked_dataset` / :func:`read_attacked_dir`: the file-name convention of the
  paper's released typographic data, ``label=<true class>_text=<written class>.png`` (an
  ``_<index>`` suffix is added when a pair repeats), read back as a split with labels from
  ``label=`` and the written class kept as ``texts``; :func:`typographic_task` reads a folder of them.
- :func:`attack_metrics`: clean and attacked accuracy and the attack success rate.

Attack success rate (ASR) = among attacked images whose *clean* version the model classifies
correctly, the fraction it classifies as the written class. ``text_rate`` is the same fraction
over all attacked images.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import torch
from PIL import Image

from paint.data.task import ImageSplit, Task
from paint.errors import PaintError
from paint.progress import progress as tqdm
from paint.utils import atomic_path, sha256_strings
from paint.world.lettering import AttackStyle, render_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def attack_texts(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """For each image, a class index different from its label, uniformly at random (seeded)."""
    if n_classes < 2:
        raise PaintError("a typographic attack needs at least two classes (the written word must be a wrong class)")
    labels = np.asarray(labels, dtype=np.int64)
    offsets = np.random.default_rng([seed, 0x7E47]).integers(1, n_classes, size=len(labels))
    return (labels + offsets) % n_classes  # (N,), never equal to the label


@dataclass(frozen=True)
class AttackedSplit:
    """An attacked view of a split: image i is ``base.image(i)`` with ``classnames[texts[i]]`` written on it."""

    base: ImageSplit
    classnames: tuple[str, ...]
    style: AttackStyle
    seed: int = 0
    texts: np.ndarray = field(init=False)
    identity: str = field(init=False)

    def __post_init__(self) -> None:
        texts = attack_texts(np.asarray(self.base.labels), len(self.classnames), self.seed)
        object.__setattr__(self, "texts", texts)
        names = sha256_strings(self.classnames)[:8]
        object.__setattr__(self, "identity", f"{self.base.identity}/typo-{self.style.key()}-{names}-s{self.seed}")

    def __len__(self) -> int:
        return len(self.base)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.base.labels)

    def image(self, index: int) -> Image.Image:
        rng = np.random.default_rng([self.seed, 0x7E48, index])
        return render_text(self.base.image(index), self.classnames[int(self.texts[index])], self.style, rng)


# --------------------------------------------------------------------------- the file-name convention

_NAME_RE = re.compile(r"^label=(?P<label>[^_]+)_text=(?P<text>[^_]+?)(?:_(?P<index>\d+))?$")


def encode_name(name: str) -> str:
    """A class name made safe for the convention: ``_`` separates fields, so it is escaped."""
    return quote(name, safe=" ,'()+-.&!").replace("_", "%5F")


def decode_name(text: str) -> str:
    return unquote(text)


def attacked_filename(label: str, text: str, index: int | None = None, suffix: str = ".png") -> str:
    """``label=<label>_text=<text>[_<index>].png``: the paper's released typographic data."""
    stem = f"label={encode_name(label)}_text={encode_name(text)}"
    return f"{stem}_{index}{suffix}" if index is not None else f"{stem}{suffix}"


def parse_attacked_filename(filename: str) -> tuple[str, str, int | None]:
    """(label, text, index or None) from a file name in the convention.

    Raises:
        PaintError: when the name does not follow ``label=<a>_text=<b>[_<index>].<ext>``.
    """
    stem = Path(filename).stem
    m = _NAME_RE.match(stem)
    if not m:
        raise PaintError(
            f"{filename!r} does not follow the typographic naming convention label=<class>_text=<class>.png"
        )
    index = m.group("index")
    return decode_name(m.group("label")), decode_name(m.group("text")), int(index) if index is not None else None


def write_attacked_dataset(split: AttackedSplit, out_dir: str | Path, progress: bool = True) -> list[str]:
    """Render every image of ``split`` into ``out_dir`` as PNG files in the paper's convention.

    The index suffix (the image's position in the source split) is added only to (label, text)
    pairs that occur more than once. A ``manifest.jsonl`` (file, index, label, text) and an
    ``attack.json`` (style, seed, class names) are written too. The directory is replaced atomically.

    Returns:
        The file names, in source order.
    """

    labels, texts = split.labels, split.texts
    pairs = Counter(zip(labels.tolist(), texts.tolist()))
    names = []
    for i, (y, t) in enumerate(zip(labels.tolist(), texts.tolist())):
        names.append(attacked_filename(split.classnames[y], split.classnames[t], i if pairs[(y, t)] > 1 else None))
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for i in tqdm(range(len(split)), desc=f"write {Path(out_dir).name}", disable=not progress, leave=False):
            split.image(i).save(tmp / names[i], format="PNG")
        with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as f:
            for i, name in enumerate(names):
                rec = {
                    "file": name,
                    "index": i,
                    "label": split.classnames[labels[i]],
                    "text": split.classnames[texts[i]],
                }
                f.write(json.dumps(rec) + "\n")
        meta = {
            "style": split.style.model_dump(mode="json"),
            "seed": split.seed,
            "classnames": list(split.classnames),
            "source": split.base.identity,
        }
        (tmp / "attack.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return names


@dataclass(frozen=True)
class TypographicSplit:
    """Attacked images read from files in the convention: labels from ``label=``, texts from ``text=``.

    ``source_index`` is the image's index in the split it was made from (-1 when unknown).
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    texts: np.ndarray
    source_index: np.ndarray
    identity: str

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as im:
            return im.convert("RGB")


def read_attacked_dir(
    path: str | Path, classnames: Sequence[str] | None = None
) -> tuple[TypographicSplit, tuple[str, ...]]:
    """Read a folder in the convention (ours or the paper's released data) as a split.

    Args:
        path: the folder of ``label=..._text=...`` images (other files are ignored).
        classnames: the task's class names, in label order; default: every name seen in
            ``label=`` or ``text=``, sorted.

    Returns:
        (the split, the class names its labels index).
    """
    root = Path(path)
    if not root.is_dir():
        raise PaintError(f"typographic data folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name.startswith("label="))
    if not files:
        raise PaintError(f"{root} has no images named label=<class>_text=<class>.png")
    parsed = [parse_attacked_filename(p.name) for p in files]
    manifest = {}
    if (root / "manifest.jsonl").is_file():
        for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                manifest[rec["file"]] = int(rec["index"])
    names = (
        tuple(classnames)
        if classnames is not None
        else tuple(sorted({n for lab, txt, _ in parsed for n in (lab, txt)}))
    )
    lookup = {n: i for i, n in enumerate(names)}
    for p, (lab, txt, _) in zip(files, parsed):
        for n in (lab, txt):
            if n not in lookup:
                raise PaintError(
                    f"{p.name}: class {n!r} is not among the task's class names; pass the right task or class names"
                )
    source = [manifest.get(p.name, idx if idx is not None else -1) for p, (_, _, idx) in zip(files, parsed)]
    order = sorted(range(len(files)), key=lambda k: (source[k] < 0, source[k], files[k].name))
    files = [files[k] for k in order]
    parsed = [parsed[k] for k in order]
    identity = (
        "typographic-dir/"
        + sha256_strings([str(root.resolve())] + [f"{p.name}:{p.stat().st_size}" for p in files])[:16]
    )
    split = TypographicSplit(
        paths=tuple(str(p) for p in files),
        labels=np.array([lookup[lab] for lab, _, _ in parsed], dtype=np.int64),
        texts=np.array([lookup[txt] for _, txt, _ in parsed], dtype=np.int64),
        source_index=np.array([source[k] for k in order], dtype=np.int64),
        identity=identity,
    )
    return split, names


def typographic_task(
    path: str | Path,
    name: str = "typographic",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] = ("a photo of a {}.",),
) -> Task:
    """A :class:`Task` from a folder in the convention: its sub-folders train/val/test become splits
    when present, else the whole folder is the "test" split."""
    root = Path(path)
    subs = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    splits: dict[str, ImageSplit] = {}
    names: tuple[str, ...] | None = tuple(classnames) if classnames is not None else None
    if names is None and subs:
        # One class list for every split: the union of names over all of them.
        seen = set()
        for s in subs:
            seen.update(read_attacked_dir(root / s)[1])
        names = tuple(sorted(seen))
    for s in subs or ["."]:
        split, names = read_attacked_dir(root / s, names)
        splits[s if s != "." else "test"] = split
    return Task(
        name=name,
        classnames=names,
        templates=tuple(templates),
        splits=splits,
        description=f"typographic attacks from {root}",
    )


# --------------------------------------------------------------------------- metrics


def attack_metrics(
    clean_logits: torch.Tensor | None, attacked_logits: torch.Tensor, labels: np.ndarray, texts: np.ndarray
) -> dict[str, float]:
    """Clean and attacked accuracy, attack success rate and text rate (fractions).

    Args:
        clean_logits: (N, C) on the clean images, or None when only attacked images exist
            (then the ASR is over all images).
        attacked_logits: (N, C) on the same images with the word written on them.
        labels: true classes (N,).
        texts: written classes (N,).
    """
    y = np.asarray(labels)
    t = np.asarray(texts)
    pa = attacked_logits.argmax(dim=1).numpy()
    out: dict[str, float] = {
        "attacked_accuracy": float((pa == y).mean()),
        "text_rate": float((pa == t).mean()),
        "n": int(len(y)),
    }
    if clean_logits is not None:
        pc = clean_logits.argmax(dim=1).numpy()
        ok = pc == y
        out["clean_accuracy"] = float(ok.mean())
        out["n_clean_correct"] = int(ok.sum())
        out["attack_success_rate"] = float((pa[ok] == t[ok]).mean()) if ok.any() else float("nan")
    else:
        out["attack_success_rate"] = out["text_rate"]
    return out


# --------------------------------------------------------------------------- the case study


# Lettering styles a run also tests in by default (``TypographicConfig.test_styles``): each differs
# from the default attack in one or two ways; the serif font is absent from the world's corpus.
HELD_OUT_STYLES: dict[str, AttackStyle] = {
    "bottom": AttackStyle(position="bottom", jitter=0.05),
    "small": AttackStyle(font_size=0.22),
    "serif": AttackStyle(font="DejaVuSerif.ttf"),
    "faint": AttackStyle(opacity=0.6),
    "random place and ink": AttackStyle(position="random", colour="random"),
}
