"""Classification tasks in the offline world, as :class:`paint.data.task.Task` objects.

Each split is rendered lazily: image ``i`` of a split is a pure function of
``(task, split, seed, i)``, labels are balanced and known without rendering, and the
split's ``identity`` names the generator version, task, split, seed and size (it keys
preprocessing caches).

Support tasks (the shipped model is strong on them zero-shot): ``shapes``, ``colours``,
``rendered-digits``, ``backgrounds``. Others: ``counting`` (a later patching task) and
``novel-font-digits`` (digits in fonts held out of pretraining, blurred like scans: for
broad transfer from the handwritten-digit patch).

Benchmark tasks (:data:`BENCHMARK_TASKS`, for the N-task merging benchmark
``benchmarks/bench_merging.py``; weak zero-shot, learnt by fine-tuning): ``typographic-shapes``
and ``typographic-colours`` (a shape with a wrong shape or colour word written over it),
``upside-down-digits`` and ``mirrored-digits`` (pretraining-font digits turned by 180 degrees or
mirrored), ``pair-colours`` (two shapes; the colour of the right one) and ``tiny-shapes``. They
use only words of the world's vocabulary and stay out of :data:`WORLD_TASKS` and
:func:`task_texts`, so the tokenizer and the pretraining corpus do not change.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from paint.data.task import Task
from paint.errors import PaintError
from paint.world import glyphs as G
from paint.world import lettering as L
from paint.world import render as R
from paint.world.corpus import GENERATOR_VERSION

WORLD_TASKS: tuple[str, ...] = ("shapes", "colours", "rendered-digits", "backgrounds", "counting", "novel-font-digits")
BENCHMARK_TASKS: tuple[str, ...] = (
    "typographic-shapes",
    "typographic-colours",
    "upside-down-digits",
    "mirrored-digits",
    "pair-colours",
    "tiny-shapes",
    "outline-shapes",
)
SUPPORT_TASKS: tuple[str, ...] = ("shapes", "colours", "rendered-digits", "backgrounds")
DEFAULT_SIZES: Mapping[str, int] = {"train": 2000, "val": 500, "test": 1000}

# Digit words, as paint's scikit-learn ``digits`` task names its classes (same head wording).
DIGIT_CLASSNAMES: tuple[str, ...] = R.DIGIT_WORDS

CLASSNAMES: Mapping[str, tuple[str, ...]] = {
    "shapes": R.SHAPES,
    "colours": R.COLOUR_NAMES,
    "rendered-digits": DIGIT_CLASSNAMES,
    "backgrounds": R.BACKGROUNDS,
    "counting": R.COUNT_WORDS,
    "novel-font-digits": DIGIT_CLASSNAMES,
    "typographic-shapes": R.SHAPES,
    "typographic-colours": R.COLOUR_NAMES,
    "upside-down-digits": DIGIT_CLASSNAMES,
    "mirrored-digits": DIGIT_CLASSNAMES,
    "pair-colours": R.COLOUR_NAMES,
    "tiny-shapes": R.SHAPES,
    "outline-shapes": R.SHAPES,
}

DIGIT_TEMPLATES: tuple[str, ...] = ('a photo of the number: "{}".', "the digit {}.", "the number {}.")
TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "shapes": ("a photo of a {}.", "a drawing of a {}.", "a {}.", "there is a {}."),
    "colours": ("a photo of a {} shape.", "something {}.", "a {} object.", "a {} thing."),
    "backgrounds": ("a photo of a {} background.", "a shape on a {} background.", "a {} pattern."),
    "rendered-digits": DIGIT_TEMPLATES,
    "counting": ("a photo of {} objects.", "{} objects.", "there are {} shapes."),
    "novel-font-digits": DIGIT_TEMPLATES,
}
TEMPLATES = {
    **TEMPLATES,
    "typographic-shapes": TEMPLATES["shapes"],
    "typographic-colours": TEMPLATES["colours"],
    "upside-down-digits": DIGIT_TEMPLATES,
    "mirrored-digits": DIGIT_TEMPLATES,
    "pair-colours": TEMPLATES["colours"],
    "tiny-shapes": TEMPLATES["shapes"],
    "outline-shapes": TEMPLATES["shapes"],
}

DESCRIPTIONS: Mapping[str, str] = {
    "shapes": "one shape (8 kinds) of any colour on any background",
    "colours": "the colour (9 hues) of one shape",
    "rendered-digits": "digits 0-9 in pretraining fonts: crisp, bold and 8x8-scan styles",
    "backgrounds": "the background pattern (6 kinds) behind one shape",
    "counting": "how many small objects (1-10, scattered off the corpus's grid) an image holds",
    "novel-font-digits": "digits 0-9 in fonts and a slanted scan style held out of pretraining, like the 8x8 scans",
    "typographic-shapes": "one shape (8 kinds) with the name of another shape written over it",
    "typographic-colours": "the colour (9 hues) of one shape with the name of another colour written over it",
    "upside-down-digits": "digits 0-9 in pretraining fonts, turned upside down (rotated by 180 degrees)",
    "mirrored-digits": "digits 0-9 in pretraining fonts, mirrored left to right",
    "pair-colours": "two shapes of different colours side by side: the colour (9 hues) of the right one",
    "tiny-shapes": "one tiny shape (8 kinds, radius 3-4 px) anywhere in the frame",
    "outline-shapes": "one shape (8 kinds) drawn as its outline only",
}


def _draw_shapes_task(label: int, rng: np.random.Generator) -> Image.Image:
    return R.render_shape(R.SHAPES[label], _pick(rng, R.COLOUR_NAMES), _pick(rng, R.BACKGROUNDS), rng)


def _draw_colours_task(label: int, rng: np.random.Generator) -> Image.Image:
    return R.render_shape(_pick(rng, R.SHAPES), R.COLOUR_NAMES[label], _pick(rng, R.BACKGROUNDS), rng)


def _draw_backgrounds_task(label: int, rng: np.random.Generator) -> Image.Image:
    return R.render_shape(_pick(rng, R.SHAPES), _pick(rng, R.COLOUR_NAMES), R.BACKGROUNDS[label], rng)


def _draw_rendered_digit(label: int, rng: np.random.Generator) -> Image.Image:
    style = _pick(rng, R.DIGIT_STYLES)
    colour = _pick(rng, R.COLOUR_NAMES) if rng.random() < 0.7 else None
    return G.render_digit(label, _pick(rng, R.PRETRAIN_FONTS), style, rng, colour=colour)


def _draw_novel_digit(label: int, rng: np.random.Generator) -> Image.Image:
    # Held-out fonts in a held-out style that looks like the handwritten scans.
    return G.render_digit(label, _pick(rng, R.HELDOUT_FONTS), _pick(rng, R.HELDOUT_DIGIT_STYLES), rng)


def _draw_counting(label: int, rng: np.random.Generator) -> Image.Image:
    bg = "plain" if rng.random() < 0.6 else _pick(rng, R.BACKGROUNDS)
    # Scattered, not on the corpus's patch-aligned grid: the model must count, not tally patches.
    return R.render_count(label + 1, _pick(rng, R.SHAPES), _pick(rng, R.COLOUR_NAMES), bg, rng, layout="scatter")


def _other(rng: np.random.Generator, options: tuple[str, ...], label: int) -> str:
    """A uniformly drawn option other than ``options[label]``."""
    return options[(label + 1 + int(rng.integers(len(options) - 1))) % len(options)]


def _draw_typographic_shapes(label: int, rng: np.random.Generator) -> Image.Image:
    img = R.render_shape(R.SHAPES[label], _pick(rng, R.COLOUR_NAMES), _pick(rng, R.BACKGROUNDS), rng)
    return L.render_text(img, _other(rng, R.SHAPES, label), L.AttackStyle(), rng)


def _draw_typographic_colours(label: int, rng: np.random.Generator) -> Image.Image:
    img = R.render_shape(_pick(rng, R.SHAPES), R.COLOUR_NAMES[label], _pick(rng, R.BACKGROUNDS), rng)
    return L.render_text(img, _other(rng, R.COLOUR_NAMES, label), L.AttackStyle(), rng)


def _draw_upright_digit(label: int, rng: np.random.Generator) -> Image.Image:
    # Crisp or bold pretraining-font digits (the scan styles lose too much when turned).
    style = _pick(rng, ("crisp", "bold"))
    colour = _pick(rng, R.COLOUR_NAMES) if rng.random() < 0.7 else None
    return G.render_digit(label, _pick(rng, R.PRETRAIN_FONTS), style, rng, colour=colour)


def _draw_upside_down_digit(label: int, rng: np.random.Generator) -> Image.Image:
    return _draw_upright_digit(label, rng).transpose(Image.Transpose.ROTATE_180)


def _draw_mirrored_digit(label: int, rng: np.random.Generator) -> Image.Image:
    return _draw_upright_digit(label, rng).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _draw_pair_colours(label: int, rng: np.random.Generator) -> Image.Image:
    first = _other(rng, R.COLOUR_NAMES, label)
    shapes = (_pick(rng, R.SHAPES), _pick(rng, R.SHAPES))
    bg = "plain" if rng.random() < 0.6 else _pick(rng, R.BACKGROUNDS)
    return R.render_pair(shapes, (first, R.COLOUR_NAMES[label]), bg, rng)


def _draw_tiny_shapes(label: int, rng: np.random.Generator) -> Image.Image:
    bg = "plain" if rng.random() < 0.6 else _pick(rng, R.BACKGROUNDS)
    return R.render_tiny_shape(R.SHAPES[label], _pick(rng, R.COLOUR_NAMES), bg, rng)


def _draw_outline_shapes(label: int, rng: np.random.Generator) -> Image.Image:
    bg = "plain" if rng.random() < 0.6 else _pick(rng, R.BACKGROUNDS)
    return R.render_outline_shape(R.SHAPES[label], _pick(rng, R.COLOUR_NAMES), bg, rng)


DRAWERS: Mapping[str, Callable[[int, np.random.Generator], Image.Image]] = {
    "shapes": _draw_shapes_task,
    "colours": _draw_colours_task,
    "rendered-digits": _draw_rendered_digit,
    "backgrounds": _draw_backgrounds_task,
    "counting": _draw_counting,
    "novel-font-digits": _draw_novel_digit,
    "typographic-shapes": _draw_typographic_shapes,
    "typographic-colours": _draw_typographic_colours,
    "upside-down-digits": _draw_upside_down_digit,
    "mirrored-digits": _draw_mirrored_digit,
    "pair-colours": _draw_pair_colours,
    "tiny-shapes": _draw_tiny_shapes,
    "outline-shapes": _draw_outline_shapes,
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _code(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@dataclass(frozen=True)
class WorldSplit:
    """A lazily rendered split of a world task (follows the ``ImageSplit`` protocol)."""

    task: str
    split: str
    seed: int
    size: int
    identity: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "identity", f"paint-world/{GENERATOR_VERSION}/{self.task}/{self.split}/seed{self.seed}/n{self.size}"
        )

    def __len__(self) -> int:
        return self.size

    @property
    def labels(self) -> np.ndarray:
        # Balanced classes in a seeded order; computed without rendering any image.
        n_classes = len(CLASSNAMES[self.task])
        rng = np.random.default_rng([_code(self.task), _code(self.split), self.seed, 0x1AB])
        return rng.permutation(np.arange(self.size) % n_classes).astype(np.int64)

    def image(self, index: int) -> Image.Image:
        if not 0 <= index < self.size:
            raise IndexError(index)
        label = int(self.labels[index])
        rng = np.random.default_rng([_code(self.task), _code(self.split), self.seed, index])
        return DRAWERS[self.task](label, rng)


def world_task(name: str, seed: int = 0, sizes: dict | None = None) -> Task:
    """A world task with lazily rendered "train", "val" and "test" splits.

    Args:
        name: one of :data:`WORLD_TASKS` or :data:`BENCHMARK_TASKS`.
        seed: generator seed (a different seed gives different images).
        sizes: split name -> number of images; missing splits use :data:`DEFAULT_SIZES`.
    """
    if name not in CLASSNAMES:
        raise PaintError(f"unknown world task {name!r}; choose one of: {', '.join(WORLD_TASKS + BENCHMARK_TASKS)}")
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    for split, n in sizes.items():
        if int(n) < 1:
            raise PaintError(f"world task {name!r}: split {split!r} needs at least one image, got {n}")
    splits = {split: WorldSplit(name, split, seed, int(n)) for split, n in sizes.items()}
    return Task(
        name=name, classnames=CLASSNAMES[name], templates=TEMPLATES[name], splits=splits, description=DESCRIPTIONS[name]
    )


def task_texts() -> list[str]:
    """Every prompt of every world task (class name in every template), for the tokenizer."""
    return [t.format(c) for name in WORLD_TASKS for c in CLASSNAMES[name] for t in TEMPLATES[name]]
