"""Drawing text in the offline world: words written across an image (typographic labels) and digits
(crisp, bold and scanned styles, like scikit-learn's handwritten digits), from matplotlib's fonts."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from paint.world.render import (
    SIZE,
    SUPER,
    colour_rgb,
    jitter_colour,
    load_font,
    render_background,
)


def _glyph_mask(text: str, font: str, px: int, stroke: int = 0) -> Image.Image:
    """A tight L-mode mask of ``text`` rendered at ``px`` pixels (with an optional stroke)."""
    f = load_font(font, px)
    l, t, r, b = f.getbbox(text, stroke_width=stroke)
    img = Image.new("L", (max(1, r - l), max(1, b - t)), 0)
    ImageDraw.Draw(img).text((-l, -t), text, font=f, fill=255, stroke_width=stroke, stroke_fill=255)
    return img


def render_word(
    img: Image.Image,
    word: str,
    rgb: tuple[int, int, int],
    rng: np.random.Generator | None = None,
    font: str = "DejaVuSans-Bold.ttf",
    height: int = 10,
) -> Image.Image:
    """Write ``word`` across an image (a typographic label), fitted to the width, near the centre.

    Args:
        img: the image to write on (not modified; a copy is returned).
        word: the text.
        rgb: ink colour.
        rng: jitters the vertical position when given.
        font: a file name from matplotlib's font folder.
        height: target glyph height in pixels before fitting to the width.
    """
    w, h = img.size
    mask = _glyph_mask(word, font, height * SUPER)
    scale = min((w - 2) / mask.width, height / mask.height)
    mw, mh = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
    mask = mask.resize((mw, mh), Image.BOX)
    x = (w - mw) // 2
    y = (h - mh) // 2 + (int(rng.integers(-6, 7)) if rng is not None else 0)
    y = int(np.clip(y, 0, h - mh))
    out = img.copy()
    out.paste(Image.new("RGB", (mw, mh), rgb), (x, y), mask)
    return out


def _scanify(grey: np.ndarray) -> Image.Image:
    """A bright-on-dark grey 32x32 array -> 8x8 with 17 grey levels -> bicubic back to 32x32.

    This mimics scikit-learn's digits (4x4 block counts, values 0-16) as paint's
    preprocessing sees them after resizing 8x8 up to 32x32.
    """
    blocks = grey.reshape(8, 4, 8, 4).mean(axis=(1, 3)) / 255.0  # (8, 8) in [0, 1]
    levels = np.round(blocks * 16.0) / 16.0
    small = Image.fromarray((levels * 255).astype(np.uint8), "L")
    return small.resize((SIZE, SIZE), Image.BICUBIC).convert("RGB")


def render_digit(
    digit: int,
    font: str,
    style: str,
    rng: np.random.Generator,
    colour: str | None = None,
    background: str = "plain",
) -> Image.Image:
    """The digit ``digit`` in ``font`` and one of :data:`DIGIT_STYLES` or :data:`HELDOUT_DIGIT_STYLES`.

    Crisp and bold digits are coloured ink on a background. Scans are grey ink on black,
    reduced to 8x8 with 17 grey levels and scaled back up, like scikit-learn's digits;
    pretraining scans are upright and smaller than the frame, while the held-out
    "slanted-scan" style is sheared, rotated and fills the frame as the handwritten scans do.
    """
    text = str(digit)
    scan = style in ("scan", "bold-scan", "slanted-scan")
    bold = style in ("bold", "bold-scan")
    stroke = int(rng.integers(2, 4)) * SUPER // 2 if bold else 0
    mask = _glyph_mask(text, font, 26 * SUPER, stroke=stroke)
    if style == "slanted-scan":
        # Handwriting-like variation: a random shear and rotation before the box fit.
        shear = rng.uniform(-0.3, 0.3)
        mask = mask.transform(
            (mask.width + int(abs(shear) * mask.height), mask.height),
            Image.AFFINE,
            (1, shear, -shear * mask.height if shear > 0 else 0, 0, 1, 0),
            resample=Image.BILINEAR,
        )
        mask = mask.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, expand=True)
        box_h = rng.uniform(26, 32)
    elif scan:
        box_h = rng.uniform(18, 25)
    else:
        box_h = rng.uniform(15, 24)
    bbox = mask.getbbox() or (0, 0, mask.width, mask.height)
    mask = mask.crop(bbox)
    scale = min(box_h / mask.height, (SIZE - 2) / mask.width)
    mw, mh = max(1, round(mask.width * scale)), max(1, round(mask.height * scale))
    mask = mask.resize((mw, mh), Image.BOX)
    spread = 0.8 if scan else 2.0
    x = int(np.clip(round((SIZE - mw) / 2 + rng.normal(0, spread)), 0, SIZE - mw))
    y = int(np.clip(round((SIZE - mh) / 2 + rng.normal(0, spread)), 0, SIZE - mh))
    if scan:
        canvas = Image.new("L", (SIZE, SIZE), 0)
        canvas.paste(mask, (x, y))
        if rng.random() < 0.5:
            canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        grey = np.asarray(canvas, dtype=np.float32) * rng.uniform(0.8, 1.0)
        return _scanify(grey)
    rgb = jitter_colour(colour_rgb(colour), rng) if colour else (255, 255, 255)
    img = render_background(background, rng)
    img.paste(Image.new("RGB", (mw, mh), rgb), (x, y), mask)
    return img
