"""Opening image files: a check cheap enough to run on every file at read time, and decoding.

``Image.verify()`` checks PNG chunk CRCs but does not decode JPEG (or most other) pixel
data, so a truncated JPEG used to pass the read-time check and abort the run later, at
preprocessing. :func:`check_image` closes that gap without decoding every file: a PNG
is trusted after ``verify()``; a JPEG is trusted when it ends with the EOI marker
(``FF D9``, which cannot occur inside entropy-coded data, so a cut file lacks it); any
other file, or a JPEG without EOI, is decoded once to decide.

Huge images trip PIL's decompression-bomb warning at every open; :func:`check_image`
reports them so the reader can say so in one line, and :func:`open_rgb` silences PIL's
own warning at decode time.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

from PIL import Image

_TRUSTED_AFTER_VERIFY = ("PNG",)  # verify() reads every chunk and checks its CRC
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of :func:`check_image`: ``problem`` is None when the file decodes."""

    problem: str | None
    huge: bool = False  # over PIL's MAX_IMAGE_PIXELS (decodes, but slowly and with much memory)


def _jpeg_ends_with_eoi(path: str) -> bool:
    """Whether the file, less trailing padding, ends with the JPEG end-of-image marker."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 256))
        tail = f.read().rstrip(b"\x00\r\n ")
    return tail.endswith(_EOI)


def _decode(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()


def check_image(path: str) -> ImageCheck:
    """Whether ``path`` decodes as an image, decoding only files whose structure cannot tell."""
    try:
        if os.path.getsize(path) == 0:
            return ImageCheck("empty file")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format
                im.verify()
        huge = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
        if fmt in _TRUSTED_AFTER_VERIFY or (fmt == "JPEG" and _jpeg_ends_with_eoi(path)):
            return ImageCheck(None, huge)
        _decode(path)
        return ImageCheck(None, huge)
    except Image.DecompressionBombError:
        return ImageCheck(f"more than twice PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels", huge=True)
    except Exception as e:  # any decoder error means the file is unusable
        return ImageCheck(f"{type(e).__name__}: {e}")


# ``warnings.catch_warnings`` swaps process-wide state and is not thread-safe (before Python 3.14):
# decoding threads (paint.data.parallel) interleaving it left a muting filter behind for good. So
# threads take turns to open a file (header parsing; where PIL checks the size), and decode in parallel.
_QUIET_OPEN = threading.Lock()


def open_rgb(path: str) -> Image.Image:
    """The image at ``path`` as RGB; huge images were reported once at read time, so PIL's warning is muted."""
    with _QUIET_OPEN, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        return im.convert("RGB")
