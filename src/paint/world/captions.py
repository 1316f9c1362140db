"""Caption templates for the offline world's images.

Captions vary their wording, and name the colour in only about 30% of shape captions:
when most captions name the colour, the contrastive loss can match on colour alone and
the text embeddings of shape names collapse onto each other.

Written words are captioned two ways, as web alt-text is: by their text (`the word "star"`)
and, for a share of words that name a thing of the world (a shape, a colour, a digit), as
that thing itself (a sign reading STOP is "a stop sign"). The second kind ties the image of
a written name to the object prompts zero-shot heads use, which is what makes CLIP-style
models susceptible to typographic attacks.
"""

from __future__ import annotations

import numpy as np

COLOUR_MENTION = 0.3  # fraction of shape captions naming the colour (20-35% works)
BACKGROUND_MENTION = 0.35
SIZE_MENTION = 0.25
OBJECT_PHRASING = 0.6  # fraction of written class names captioned as the object they name

SHAPE_TEMPLATES: tuple[str, ...] = (
    "{a} {np}",
    "a photo of {a} {np}",
    "a drawing of {a} {np}",
    "an image of {a} {np}",
    "a picture of {a} {np}",
    "this is {a} {np}",
    "{a} {np} in the middle",
    "there is {a} {np}",
)
COLOUR_ONLY_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {colour} shape",
    "something {colour}",
    "{a} {colour} object",
    "a {colour} thing",
)
BACKGROUND_ONLY_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {bg} background",
    "a shape on {a} {bg} background",
    "{a} {bg} pattern",
)
DIGIT_TEMPLATES: tuple[str, ...] = (
    'a photo of the number: "{d}"',
    'a photo of the number: "{w}"',
    "the digit {w}",
    "the number {d}",
    "the digit {d}",
    "the number {w}",
    "a {d}",
    "the digit {w} ( {d} )",
    "a picture of the number {w}",
    'the character "{d}"',
)
# Digit wordings that need only the word (a written "seven" carries no numeral).
DIGIT_WORD_OBJECT_TEMPLATES: tuple[str, ...] = (
    'a photo of the number: "{w}"',
    "the digit {w}",
    "the number {w}",
    "a picture of the number {w}",
)
SCAN_TEMPLATES: tuple[str, ...] = (
    "a blurry scan of the digit {d}",
    "a low resolution {d}",
    "a grey {d} on black",
    "a scanned number {w}",
    "a pixelated digit {d}",
)
WORD_TEMPLATES: tuple[str, ...] = (
    'the word "{word}"',
    'a sign that says "{word}"',
    "text that reads {word}",
    "the text {word}",
    "{word} written on it",
    'a label reading "{word}"',
)
LABELLED_SHAPE_TEMPLATES: tuple[str, ...] = (
    'a {shape} with the word "{word}" written on it',
    "a {shape} labelled {word}",
    'a photo of a {shape} with the text "{word}"',
)
COUNT_TEMPLATES: tuple[str, ...] = (
    "{nw} {shapes}",
    "{n} {shapes}",
    "a photo of {nw} objects",
    "a photo of {n} objects",
    "there are {nw} {shapes}",
    "{nw} objects",
    "there are {nw} shapes",
    "{nw} small {colour} {shapes}",
)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ss")) else "s")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _finish(text: str, rng: np.random.Generator) -> str:
    # Half the captions end with a full stop, as prompt templates usually do.
    return text + "." if rng.random() < 0.5 else text


def shape_caption(shape: str, colour: str, background: str, size: str, rng: np.random.Generator) -> str:
    """A caption for one shape; colour, background and size are each named only sometimes."""
    r = rng.random()
    if r < 0.07:
        text = _pick(rng, COLOUR_ONLY_TEMPLATES).format(a=article(colour), colour=colour)
    elif r < 0.13:
        text = _pick(rng, BACKGROUND_ONLY_TEMPLATES).format(a=article(background), bg=background)
    else:
        words = []
        if rng.random() < SIZE_MENTION:
            words.append(size)
        if rng.random() < COLOUR_MENTION:
            words.append(colour)
        words.append(shape)
        np_ = " ".join(words)
        text = _pick(rng, SHAPE_TEMPLATES).format(a=article(np_), np=np_)
        if rng.random() < BACKGROUND_MENTION:
            text += f" on {article(background)} {background} background"
    return _finish(text, rng)


def digit_caption(digit: int, word: str, style: str, colour: str | None, rng: np.random.Generator) -> str:
    """A caption for a rendered digit, by numeral or by word, naming scans as such half the time."""
    if style in ("scan", "bold-scan") and rng.random() < 0.5:
        text = _pick(rng, SCAN_TEMPLATES).format(d=digit, w=word)
    else:
        text = _pick(rng, DIGIT_TEMPLATES).format(d=digit, w=word)
        if colour and rng.random() < COLOUR_MENTION:
            text += f" in {colour}"
        elif style.startswith("bold") and rng.random() < 0.3:
            text += " in bold"
    return _finish(text, rng)


def object_phrase(word: str, family: str, rng: np.random.Generator) -> str:
    """A caption naming a written class name as the object itself, in its family's wording.

    Args:
        word: the written word, e.g. "star", "red" or "seven".
        family: "shape", "colour" or "digit": which task prompts' wording to use.
        rng: random stream for the template choice.
    """
    if family == "shape":
        return _pick(rng, SHAPE_TEMPLATES).format(a=article(word), np=word)
    if family == "colour":
        return _pick(rng, COLOUR_ONLY_TEMPLATES).format(a=article(word), colour=word)
    if family == "digit":
        return _pick(rng, DIGIT_WORD_OBJECT_TEMPLATES).format(w=word)
    raise ValueError(f"unknown word family {family!r}")


def word_caption(word: str, shape: str | None, rng: np.random.Generator, family: str | None = None) -> str:
    """A caption for a written word (on a shape, if ``shape`` is given).

    When ``family`` names the class family of ``word``, a share :data:`OBJECT_PHRASING` of
    captions describes the word as the object (`a photo of a star.` for the written word
    "star", whatever is under it); the rest state the text (and the shape under it, if any).
    """
    if family is not None and rng.random() < OBJECT_PHRASING:
        return _finish(object_phrase(word, family, rng), rng)
    if shape is not None:
        text = _pick(rng, LABELLED_SHAPE_TEMPLATES).format(shape=shape, word=word)
    else:
        text = _pick(rng, WORD_TEMPLATES).format(word=word)
    return _finish(text, rng)


def count_caption(count: int, count_word: str, shape: str, colour: str, rng: np.random.Generator) -> str:
    """A caption stating how many objects there are, as a word or a numeral."""
    shapes = plural(shape) if count > 1 else shape
    text = _pick(rng, COUNT_TEMPLATES).format(n=count, nw=count_word, shapes=shapes, colour=colour)
    return _finish(text, rng)
