"""What config-driven commands share: ``--set`` overrides, and threads from the flag or the config."""

from __future__ import annotations

import argparse
from typing import Any


def add_set_option(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): a dotted config override, validated like the file."""
    p.add_argument(
        "--set",
        dest="set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, dotted for nested ones (repeatable; VALUE is YAML), e.g. --set finetune.epochs=2",
    )


def load_run_config(cls: type, path: str | None, overrides: dict[str, Any], args: argparse.Namespace) -> Any:
    """The config from an optional YAML file, flags (those not None) on top, then ``--set`` items; threads applied.

    ``--threads`` (when given) overrides the config's ``threads`` field, so the resolved config
    written beside the results records the setting the run used.
    """
    from paint.config import apply_overrides, load_config, parse_config
    from paint.runtime import apply_threads

    given = {k: v for k, v in overrides.items() if v is not None}
    threads = getattr(args, "threads", None)
    if threads is not None and "threads" in cls.model_fields:
        given["threads"] = _threads_for(cls, threads)
    sets = list(getattr(args, "set", None) or [])
    if path:
        cfg = load_config(cls, path, given, sets)
    else:
        cfg = parse_config(cls, apply_overrides(cls, given, sets), "command line")
    apply_threads(threads if threads is not None else getattr(cfg, "threads", None))
    return cfg


def _threads_for(cls: type, threads: object) -> object:
    """The flag's value in the form the config field takes (a field that is a plain count gets auto resolved)."""
    from pydantic import TypeAdapter, ValidationError

    from paint.runtime import parse_threads, resolve_threads

    value = parse_threads(threads)
    if value == "auto":
        try:
            TypeAdapter(cls.model_fields["threads"].annotation).validate_python("auto")
        except ValidationError:
            return resolve_threads("auto")[0]
    return value
