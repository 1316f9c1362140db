"""Words written over images: the pixels of typographic attacks and of the corpus's labelled shapes.

:func:`render_text` writes a word on any image in an :class:`AttackStyle` (font, size, colour,
position, opacity); the pixels are a pure function of (image, word, style, random stream).
``paint.studies.typographic`` attacks task images with it, and the world's corpus draws its labelled
shapes with it (world-v3c), so the pretraining data shows the attack's pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from paint.config import StrictModel
from paint.errors import PaintError
from paint.utils import sha256_strings
from paint.world.render import COLOURS, load_font

SUPERSAMPLE = 4  # text is drawn at 4x and box-filtered down: clean edges at 32 px
NAMED_INKS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}


class AttackStyle(StrictModel):
    """How the misleading word is drawn.

    ``font_size`` is the glyph height as a fraction of the image height (the word is shrunk
    further if it would be wider than ``max_width`` of the image). ``colour`` is "contrast"
    (black or white, whichever stands out more from the pixels under the word), "random"
    (a seeded RGB), a named ink ("white", "black", or a colour of the offline world), or
    ``[r, g, b]``. ``position`` is "center", "top", "bottom", "random" (seeded, anywhere the
    word fits) or ``[x, y]``: the word's centre as fractions of width and height.
    ``jitter`` moves the centre by up to that fraction of the image size (seeded).
    The defaults resemble the labelled images of the offline world's corpus.
    """

    font: str = "DejaVuSans-Bold.ttf"
    font_size: float = Field(0.31, gt=0.0, le=1.0)
    max_width: float = Field(0.94, gt=0.0, le=1.0)
    colour: str | tuple[int, int, int] = "contrast"
    position: Literal["center", "top", "bottom", "random"] | tuple[float, float] = "center"
    jitter: float = Field(0.15, ge=0.0, le=0.5)
    opacity: float = Field(1.0, ge=0.0, le=1.0)

    @field_validator("colour")
    @classmethod
    def _colour(cls, v):
        if isinstance(v, str):
            if v not in ("contrast", "random") and v not in NAMED_INKS and v not in _world_colours():
                raise ValueError(
                    f"unknown colour {v!r}; use contrast, random, white, black, a world colour or [r, g, b]"
                )
        elif any(not 0 <= c <= 255 for c in v):
            raise ValueError("colour channels must be in 0..255")
        return v

    @field_validator("position")
    @classmethod
    def _position(cls, v):
        if not isinstance(v, str) and any(not 0.0 <= c <= 1.0 for c in v):
            raise ValueError("position [x, y] must be fractions in [0, 1]")
        return v

    def key(self) -> str:
        """A short hash of the style (it enters split identities and cache keys)."""
        return sha256_strings([self.model_dump_json()])[:12]


def _world_colours() -> dict[str, tuple[int, int, int]]:
    return dict(COLOURS)


def font_path(font: str) -> Path:
    """A font file: a path, or a name in matplotlib's bundled fonts (as the offline world uses)."""
    p = Path(font)
    if p.is_file():
        return p
    import matplotlib

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / font
    if bundled.is_file():
        return bundled
    raise PaintError(
        f"font {font!r} is neither a file nor one of matplotlib's bundled fonts (e.g. DejaVuSans-Bold.ttf)"
    )


def _load_font(font: str, px: int) -> ImageFont.FreeTypeFont:
    try:  # the world's loader for its bundled fonts
        return load_font(font, px)
    except OSError:
        return ImageFont.truetype(str(font_path(font)), px)


def text_mask(text: str, font: str, px: int) -> Image.Image:
    """A tight "L" mask of ``text`` drawn at ``px`` pixels (255 = ink)."""
    f = _load_font(font, px)
    left, top, right, bottom = f.getbbox(text)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=f, fill=255)
    return mask


def _ink(style: AttackStyle, region: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """The text colour; ``region`` (h, w, 3) is what the text will cover (for "contrast")."""
    c = style.colour
    if not isinstance(c, str):
        return tuple(int(x) for x in c)  # type: ignore[return-value]
    if c == "contrast":
        luminance = float((region.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])).mean()) if region.size else 0.0
        return (0, 0, 0) if luminance > 140 else (255, 255, 255)
    if c == "random":
        return tuple(int(x) for x in rng.integers(0, 256, size=3))  # type: ignore[return-value]
    return NAMED_INKS.get(c) or _world_colours()[c]


def render_text(img: Image.Image, text: str, style: AttackStyle, rng: np.random.Generator) -> Image.Image:
    """``img`` with ``text`` written on it (a copy; the input is not modified).

    Args:
        img: any RGB image.
        text: the word to write.
        style: font, size, colour, position, opacity.
        rng: the seeded generator for jitter, random positions and random colours.
    """
    img = img.convert("RGB")
    w, h = img.size
    target_h = max(1.0, style.font_size * h)
    mask = text_mask(text, style.font, max(4, round(target_h * SUPERSAMPLE)))
    scale = min(target_h / mask.height, style.max_width * w / mask.width)
    mw, mh = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
    mask = mask.resize((mw, mh), Image.BOX)  # (mh, mw) anti-aliased coverage
    if style.position == "random":
        cx = rng.uniform(mw / 2, max(mw / 2, w - mw / 2))
        cy = rng.uniform(mh / 2, max(mh / 2, h - mh / 2))
    else:
        fx, fy = {"center": (0.5, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8)}.get(style.position, style.position)  # type: ignore[arg-type]
        cx, cy = fx * w, fy * h
        if style.jitter > 0:
            cx += rng.uniform(-style.jitter, style.jitter) * w * 0.25  # sideways room is scarce: words fill the width
            cy += rng.uniform(-style.jitter, style.jitter) * h
    x = int(np.clip(round(cx - mw / 2), 0, max(0, w - mw)))
    y = int(np.clip(round(cy - mh / 2), 0, max(0, h - mh)))
    region = np.asarray(img)[y : y + mh, x : x + mw][np.asarray(mask) > 127]
    ink = _ink(style, region, rng)
    if style.opacity < 1.0:
        mask = mask.point(lambda v: int(round(v * style.opacity)))
    out = img.copy()
    out.paste(Image.new("RGB", (mw, mh), ink), (x, y), mask)
    return out
