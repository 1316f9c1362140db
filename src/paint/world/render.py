"""Drawing the offline world: shapes, backgrounds, digits, words and groups of objects.

Every function takes a ``numpy.random.Generator`` (or explicit parameters) and returns a
32x32 RGB PIL image, so an image is a pure function of its seed. Shapes are drawn on a
4x supersampled mask and box-filtered down, which gives clean anti-aliased edges at 32 px.

Fonts come from matplotlib's bundled TrueType files (DejaVu, STIX, Computer Modern), which
exist wherever matplotlib is installed; system font folders are never used.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 32  # every world image is SIZE x SIZE RGB
SUPER = 4  # supersampling factor for shape masks

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon")

# Object colours: saturated hues, distinct from the greyish backgrounds.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 30, 30)),
    ("orange", (245, 140, 20)),
    ("yellow", (240, 225, 30)),
    ("green", (40, 170, 50)),
    ("cyan", (30, 210, 220)),
    ("blue", (35, 70, 225)),
    ("purple", (140, 50, 200)),
    ("pink", (250, 120, 190)),
    ("brown", (130, 80, 35)),
)
COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in COLOURS)

BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted", "grid", "noisy")

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Fonts seen in pretraining, and fonts held out of it (the novel-font-digits task uses the latter).
PRETRAIN_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "STIXGeneral.ttf",
)
HELDOUT_FONTS: tuple[str, ...] = (
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "STIXGeneralBolIta.ttf",
    "DejaVuSerif-Italic.ttf",
)
WORD_FONTS: tuple[str, ...] = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSansMono-Bold.ttf")

# Digit styles: crisp glyphs, thick glyphs, and "scans" (bright ink on dark, downsampled to
# 8x8 with 17 grey levels and upsampled, like scikit-learn's handwritten digits).
DIGIT_STYLES: tuple[str, ...] = ("crisp", "bold", "scan", "bold-scan")
# Held out of pretraining (novel-font-digits): sheared, rotated, frame-filling scans.
HELDOUT_DIGIT_STYLES: tuple[str, ...] = ("slanted-scan",)


def font_dir() -> Path:
    """matplotlib's folder of bundled TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_names() -> tuple[str, ...]:
    """Every font the world may use (pretraining fonts first, then held-out ones)."""
    return PRETRAIN_FONTS + HELDOUT_FONTS


@functools.lru_cache(maxsize=256)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A matplotlib-bundled font at a pixel size (cached: loading a TTF is slow)."""
    return ImageFont.truetype(str(font_dir() / name), size)


def colour_rgb(name: str) -> tuple[int, int, int]:
    return dict(COLOURS)[name]


def jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> tuple[int, int, int]:
    """The colour with a small random shift per channel (so a colour name covers a region)."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


# --------------------------------------------------------------------------- backgrounds


def background_tones(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two greyish tones (slightly tinted) with clear contrast between them."""
    base = rng.uniform(0.15, 0.85)
    other = base + (0.28 if base < 0.5 else -0.28) * rng.uniform(0.8, 1.2)
    tint = rng.uniform(-0.05, 0.05, size=3)
    a = np.clip(base + tint, 0, 1) * 255
    b = np.clip(other + tint, 0, 1) * 255
    return a, b


def render_background(kind: str, rng: np.random.Generator) -> Image.Image:
    """A SIZE x SIZE background of one of :data:`BACKGROUNDS`."""
    a, b = background_tones(rng)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if kind == "plain":
        mask = np.zeros((SIZE, SIZE), dtype=bool)
    elif kind == "striped":
        period = int(rng.integers(4, 7))
        coord = xx if rng.random() < 0.5 else yy
        if rng.random() < 0.3:
            coord = xx + yy
        mask = (coord % period) < period // 2
    elif kind == "checkered":
        cell = int(rng.integers(3, 6))
        mask = ((xx // cell) + (yy // cell)) % 2 == 0
    elif kind == "dotted":
        period = int(rng.integers(5, 8))
        off = rng.integers(0, period, size=2)
        mask = (((xx + off[0]) % period) < 2) & (((yy + off[1]) % period) < 2)
    elif kind == "grid":
        period = int(rng.integers(5, 9))
        off = rng.integers(0, period, size=2)
        mask = (((xx + off[0]) % period) == 0) | (((yy + off[1]) % period) == 0)
    elif kind == "noisy":
        mask = rng.random((SIZE, SIZE)) < 0.5
    else:
        raise ValueError(f"unknown background {kind!r}")
    arr = np.where(mask[..., None], b[None, None, :], a[None, None, :])  # (S, S, 3)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- shapes


def _regular_polygon(n: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.sin(rot + 2 * math.pi * k / n), cy - r * math.cos(rot + 2 * math.pi * k / n)) for k in range(n)
    ]


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.42
        ang = rot + math.pi * k / 5
        pts.append((cx + rr * math.sin(ang), cy - rr * math.cos(ang)))
    return pts


def _cross(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    w = r * 0.36
    base = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def draw_shape_mask(mask: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float = 0.0) -> None:
    """Draw ``shape`` (filled, value 255) on a supersampled mask; coordinates in 32-px units."""
    k = SUPER
    cx, cy, r = cx * k, cy * k, r * k
    if shape == "circle":
        mask.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        mask.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ri = r * 0.55
        mask.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif shape == "square":
        mask.polygon(_regular_polygon(4, cx, cy, r * 1.2, rot + math.pi / 4), fill=255)
    elif shape == "diamond":
        # A rhombus taller than wide, so it never looks like a rotated square.
        pts = [(cx, cy - r * 1.1), (cx + r * 0.7, cy), (cx, cy + r * 1.1), (cx - r * 0.7, cy)]
        c, s = math.cos(rot), math.sin(rot)
        mask.polygon([(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in pts], fill=255)
    elif shape == "triangle":
        pts = _regular_polygon(3, cx, cy + r * 0.15, r * 1.15, rot)
        mask.polygon(pts, fill=255)
    elif shape == "hexagon":
        mask.polygon(_regular_polygon(6, cx, cy, r * 1.05, rot + math.pi / 6), fill=255)
    elif shape == "star":
        mask.polygon(_star(cx, cy, r * 1.2, rot), fill=255)
    elif shape == "cross":
        mask.polygon(_cross(cx, cy, r * 1.1, rot), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def composite_shapes(
    background: Image.Image,
    items: list[tuple[str, float, float, float, float, tuple[int, int, int]]],
) -> Image.Image:
    """Paint shapes (shape, cx, cy, r, rot, rgb) onto a background, anti-aliased."""
    img = background.copy()
    for shape, cx, cy, r, rot, rgb in items:
        big = Image.new("L", (SIZE * SUPER, SIZE * SUPER), 0)
        draw_shape_mask(ImageDraw.Draw(big), shape, cx, cy, r, rot)
        mask = big.resize((SIZE, SIZE), Image.BOX)
        img.paste(Image.new("RGB", (SIZE, SIZE), rgb), (0, 0), mask)
    return img


def render_shape(
    shape: str,
    colour: str,
    background: str,
    rng: np.random.Generator,
    size: str | None = None,
) -> Image.Image:
    """One shape near the centre of the frame ("small": radius 5-7 px, "large": 9-11 px)."""
    size = size or ("small" if rng.random() < 0.5 else "large")
    r = rng.uniform(5.0, 7.0) if size == "small" else rng.uniform(8.5, 11.0)
    # Mostly central positions: the small ViT learns several times faster that way.
    spread = 1.5 if size == "large" else 3.5
    cx = SIZE / 2 + float(np.clip(rng.normal(0, spread), -2 * spread, 2 * spread))
    cy = SIZE / 2 + float(np.clip(rng.normal(0, spread), -2 * spread, 2 * spread))
    rot = rng.uniform(-0.25, 0.25)
    bg = render_background(background, rng)
    return composite_shapes(bg, [(shape, cx, cy, r, rot, jitter_colour(colour_rgb(colour), rng))])


def render_count(
    count: int,
    shape: str,
    colour: str,
    background: str,
    rng: np.random.Generator,
    layout: str = "grid",
) -> Image.Image:
    """``count`` (1-16) small, non-overlapping copies of a shape.

    ``layout="grid"`` (the pretraining corpus) puts them in cells of a jittered 4x4 grid, which
    line up with a patch-8 ViT's patches, so counting reduces to counting occupied patches;
    ``"scatter"`` places them anywhere (at least one object-width apart), which a model that
    learned the grid shortcut does not count well.
    """
    if not 1 <= count <= 16:
        raise ValueError("count must be between 1 and 16")
    rgb = colour_rgb(colour)
    items = []
    if layout == "grid":
        # The order of random draws here defines the pretraining corpus: keep it.
        for c in rng.choice(16, size=count, replace=False):
            cx = 4 + 8 * int(c % 4) + rng.uniform(-0.8, 0.8)
            cy = 4 + 8 * int(c // 4) + rng.uniform(-0.8, 0.8)
            items.append((shape, cx, cy, rng.uniform(2.4, 3.2), rng.uniform(-0.2, 0.2), jitter_colour(rgb, rng)))
    elif layout == "scatter":
        centres, radii = _scatter(count, rng)
        items = [
            (shape, cx, cy, r, rng.uniform(-0.2, 0.2), jitter_colour(rgb, rng)) for (cx, cy), r in zip(centres, radii)
        ]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return composite_shapes(render_background(background, rng), items)


def _scatter(count: int, rng: np.random.Generator) -> tuple[list[tuple[float, float]], list[float]]:
    """Random non-overlapping centres (rejection sampling; shrinks objects if the frame is full)."""
    for r in (3.0, 2.6, 2.2, 1.8):
        centres: list[tuple[float, float]] = []
        for _ in range(400):
            if len(centres) == count:
                break
            c = (rng.uniform(r + 0.5, SIZE - r - 0.5), rng.uniform(r + 0.5, SIZE - r - 0.5))
            if all((c[0] - x) ** 2 + (c[1] - y) ** 2 >= (2 * r + 1.5) ** 2 for x, y in centres):
                centres.append(c)
        if len(centres) == count:
            return centres, [r * rng.uniform(0.85, 1.0) for _ in centres]
    raise ValueError(f"cannot place {count} objects")


# --------------------------------------------------------------------------- benchmark task drawings


def render_pair(
    shapes: tuple[str, str],
    colours: tuple[str, str],
    background: str,
    rng: np.random.Generator,
) -> Image.Image:
    """Two small shapes side by side (the first on the left half, the second on the right half)."""
    items = []
    for side, (shape, colour) in enumerate(zip(shapes, colours)):
        r = rng.uniform(4.0, 5.5)
        cx = (8.0 if side == 0 else 24.0) + rng.uniform(-1.5, 1.5)
        cy = SIZE / 2 + rng.uniform(-6.0, 6.0)
        items.append((shape, cx, cy, r, rng.uniform(-0.25, 0.25), jitter_colour(colour_rgb(colour), rng)))
    return composite_shapes(render_background(background, rng), items)


def render_tiny_shape(shape: str, colour: str, background: str, rng: np.random.Generator) -> Image.Image:
    """One tiny shape (radius 2.8-3.8 px) anywhere in the frame."""
    r = rng.uniform(2.8, 3.8)
    cx, cy = rng.uniform(r + 1, SIZE - r - 1), rng.uniform(r + 1, SIZE - r - 1)
    rgb = jitter_colour(colour_rgb(colour), rng)
    return composite_shapes(render_background(background, rng), [(shape, cx, cy, r, rng.uniform(-0.25, 0.25), rgb)])


def render_outline_shape(shape: str, colour: str, background: str, rng: np.random.Generator) -> Image.Image:
    """One shape drawn as its outline only (a stroke of about 1.5 px), near the centre."""
    r = rng.uniform(8.0, 11.0)
    cx = SIZE / 2 + float(np.clip(rng.normal(0, 1.5), -3, 3))
    cy = SIZE / 2 + float(np.clip(rng.normal(0, 1.5), -3, 3))
    big = Image.new("L", (SIZE * SUPER, SIZE * SUPER), 0)
    draw_shape_mask(ImageDraw.Draw(big), shape, cx, cy, r, rng.uniform(-0.25, 0.25))
    inner = big.filter(ImageFilter.MinFilter(2 * round(1.5 * SUPER) + 1))
    ring = np.asarray(big, dtype=np.int16) - np.asarray(inner, dtype=np.int16)
    edge = Image.fromarray(ring.clip(0, 255).astype(np.uint8))
    mask = edge.resize((SIZE, SIZE), Image.BOX)
    img = render_background(background, rng)
    img.paste(Image.new("RGB", (SIZE, SIZE), jitter_colour(colour_rgb(colour), rng)), (0, 0), mask)
    return img
