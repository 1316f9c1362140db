"""A griffe extension for the API reference: paint's docstrings title their doctests ``Example:``.

Google style calls the section ``Examples:``; griffe reads the singular as a plain admonition, so
the ``>>>`` lines would be rendered as prose (and ``x["a"]["b"]`` as a Markdown link). This
renames the title before the docstring is parsed, so every example renders as a code block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


class SingularExamples(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
