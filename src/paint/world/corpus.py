"""The image-caption corpus for pretraining: pair ``i`` is a pure function of ``(seed, i)``.

Nothing is stored: a batch is rendered on the fly from its indices, so the corpus is as
large as the run needs and a resumed run sees exactly the pairs it would have seen.
Scikit-learn's handwritten digits are never part of it (they are the patching task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from paint.world import captions as C
from paint.world import glyphs as G
from paint.world import lettering as L
from paint.world import render as R

GENERATOR_VERSION = "world-v3c"  # bump whenever rendering or captions change
# world-v3: a share of written class names is captioned as the object they name
# (captions.OBJECT_PHRASING), more pairs are words, and more words are written over a shape.
# world-v3c: labelled shapes are drawn like the shapes task and the attack (see word_pair).

KINDS: tuple[str, ...] = ("shape", "digit", "word", "count")
# world-v3 moved 6% of pairs from shapes to words (v2: 0.36, 0.30, 0.12, 0.22): with 12%, the
# model read written names as objects on blank images but not over a shape.
KIND_WEIGHTS: tuple[float, ...] = (0.30, 0.30, 0.18, 0.22)

EXTRA_WORDS: tuple[str, ...] = (
    "cat",
    "dog",
    "stop",
    "yes",
    "no",
    "sun",
    "tree",
    "car",
    "house",
    "paint",
    "hello",
    "apple",
)
WORDS: tuple[str, ...] = R.SHAPES + R.COLOUR_NAMES + R.DIGIT_WORDS + EXTRA_WORDS
# The class family of each written word that names a thing of the world (others have none).
WORD_FAMILIES: dict[str, str] = {
    **{w: "shape" for w in R.SHAPES},
    **{w: "colour" for w in R.COLOUR_NAMES},
    **{w: "digit" for w in R.DIGIT_WORDS},
}

LABELLED_SHARE = 0.6  # word images written over a shape (v2: 0.35)
DIGIT_STYLE_WEIGHTS: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)  # crisp, bold, scan, bold-scan
_CORPUS_STREAM = 0xC0DE  # separates corpus random streams from task streams


@dataclass(frozen=True)
class Pair:
    """One image-caption pair and the attributes it was drawn from."""

    image: Image.Image
    caption: str
    kind: str
    attributes: dict


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def shape_pair(rng: np.random.Generator) -> Pair:
    shape, colour, bg = _choice(rng, R.SHAPES), _choice(rng, R.COLOUR_NAMES), _choice(rng, R.BACKGROUNDS)
    size = "small" if rng.random() < 0.5 else "large"
    img = R.render_shape(shape, colour, bg, rng, size=size)
    cap = C.shape_caption(shape, colour, bg, size, rng)
    return Pair(img, cap, "shape", {"shape": shape, "colour": colour, "background": bg, "size": size})


def digit_pair(rng: np.random.Generator, fonts: Sequence[str] = R.PRETRAIN_FONTS) -> Pair:
    digit = int(rng.integers(10))
    font = _choice(rng, fonts)
    style = R.DIGIT_STYLES[int(rng.choice(len(R.DIGIT_STYLES), p=DIGIT_STYLE_WEIGHTS))]
    colour = _choice(rng, R.COLOUR_NAMES) if rng.random() < 0.7 else None
    bg = _choice(rng, R.BACKGROUNDS) if rng.random() < 0.3 else "plain"
    img = G.render_digit(digit, font, style, rng, colour=colour, background=bg)
    scan = style in ("scan", "bold-scan")
    cap = C.digit_caption(digit, R.DIGIT_WORDS[digit], style, None if scan else colour, rng)
    return Pair(img, cap, "digit", {"digit": digit, "font": font, "style": style, "colour": colour})


def word_pair(rng: np.random.Generator) -> Pair:
    word = _choice(rng, WORDS)
    ink = R.jitter_colour(R.colour_rgb(_choice(rng, R.COLOUR_NAMES)), rng) if rng.random() < 0.5 else (255, 255, 255)
    shape, bg = None, "plain"
    if rng.random() < LABELLED_SHARE:
        # A shape with a label on it: the typographic-attack setting, captioned honestly. world-v3c:
        # drawn like the shapes task (any background, either size) with the word written the way
        # paint.studies.typographic writes attacks (its default style), not large shapes on plain backgrounds.
        shape = _choice(rng, R.SHAPES)
        colour, bg = _choice(rng, R.COLOUR_NAMES), _choice(rng, R.BACKGROUNDS)
        base = R.render_shape(shape, colour, bg, rng)
        img = L.render_text(base, word, L.AttackStyle(), rng)
    else:
        base = R.render_background("plain", rng)
        img = G.render_word(base, word, ink, rng, font=_choice(rng, R.WORD_FONTS), height=int(rng.integers(8, 12)))
    cap = C.word_caption(word, shape, rng, family=WORD_FAMILIES.get(word))
    return Pair(img, cap, "word", {"word": word, "shape": shape, "background": bg})


def count_pair(rng: np.random.Generator) -> Pair:
    count = int(rng.integers(1, 11))
    shape, colour = _choice(rng, R.SHAPES), _choice(rng, R.COLOUR_NAMES)
    bg = "plain" if rng.random() < 0.6 else _choice(rng, R.BACKGROUNDS)
    img = R.render_count(count, shape, colour, bg, rng)
    cap = C.count_caption(count, R.COUNT_WORDS[count - 1], shape, colour, rng)
    return Pair(img, cap, "count", {"count": count, "shape": shape, "colour": colour, "background": bg})


_MAKERS = {"shape": shape_pair, "digit": digit_pair, "word": word_pair, "count": count_pair}


def corpus_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([_CORPUS_STREAM, seed, index])


def corpus_pair(seed: int, index: int) -> Pair:
    """Pair ``index`` of the corpus made with ``seed`` (identical on every call and machine)."""
    rng = corpus_rng(seed, index)
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    return _MAKERS[kind](rng)


def corpus_batch(seed: int, start: int, size: int) -> tuple[np.ndarray, list[str]]:
    """Pairs ``start .. start+size-1``: images uint8 ``(B, 3, 32, 32)`` and their captions."""
    images = np.empty((size, 3, R.SIZE, R.SIZE), dtype=np.uint8)
    texts = []
    for j in range(size):
        pair = corpus_pair(seed, start + j)
        images[j] = np.asarray(pair.image, dtype=np.uint8).transpose(2, 0, 1)
        texts.append(pair.caption)
    return images, texts
