"""The one exception type for errors a user can cause.

The CLI turns a :class:`PaintError` into a one-line message on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PaintError(Exception):
    """A problem with the user's input: config, files, data or checkpoints.

    The message is one line that names the problem and, where possible, what to do.

    Example:
        >>> from paint import PaintError, SelectionConfig
        >>> from paint.config import parse_config
        >>> try:
        ...     parse_config(SelectionConfig, {"alphas": [1.5]})
        ... except PaintError as e:
        ...     print(str(e).split(": ", 1)[1][:38])
        (top level): Value error, alpha 1.5 is
    """
