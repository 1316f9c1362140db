"""The public API: every name resolves, is documented with an example, and the runnable examples run."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import paint

TYPE_ALIASES = {"StateDict", "FAMILIES"}  # documented in docs/api.md; an alias has no docstring of its own


def test_every_public_name_resolves_and_is_listed_in_the_api_doc():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    for name in paint._API:
        assert getattr(paint, name) is not None
        assert f"`{name}" in doc, f"{name} is not in docs/api.md"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        paint.nope  # noqa: B018


@pytest.mark.parametrize("name", sorted(set(paint._API) - TYPE_ALIASES))
def test_public_name_has_a_docstring_example(name):
    assert "Example" in (inspect.getdoc(getattr(paint, name)) or ""), f"paint.{name} has no docstring example"


@pytest.mark.parametrize("module", sorted({paint._API[n] for n in paint._API}))
def test_docstring_examples_run(module):
    """Examples that are not marked ``+SKIP`` (they need a user's data) are executed as doctests."""
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(mod, module):
        if test.name.rsplit(".", 1)[-1] not in paint._API:
            continue
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {module} failed"
