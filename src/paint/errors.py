"""The one exception type for errors a user can cause.

The CLI turns a :class:`PaintError` into a one-line message on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PaintError(Exception):
    """A problem with the user's input: config, files, data or checkpoints.

    The message is one line that names the problem and, where possible, what to do.
    """
