"""Config plumbing: frozen pydantic models validated at the edge, round-tripping to YAML.

Every config class derives from :class:`StrictModel` (unknown fields and wrong types are
errors). :func:`load_config` turns a YAML file into a validated config and every
validation problem into one :class:`PaintError` line that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from paint.errors import PaintError
from paint.utils import write_yaml_atomic

C = TypeVar("C", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config: frozen, no unknown fields, strict-ish types."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class CachedRun:
    """Mixin for run configs with ``output_dir`` and ``cache_dir`` fields."""

    @property
    def cache_path(self) -> Path:
        """Preprocessed images and heads: ``cache_dir``, or ``<output_dir>/cache``."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "cache"


def alpha_grid(alphas: list[float]) -> list[float]:
    """Validate a list of mixing coefficients in [0, 1]; return it sorted with 0 and 1 added."""
    if any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError("alphas must lie in [0, 1]")
    return sorted({0.0, 1.0, *map(float, alphas)})


def first_duplicate(names: list[str]) -> str | None:
    """The first name (alphabetically) that appears more than once, or None."""
    dup = sorted({n for n in names if names.count(n) > 1})
    return dup[0] if dup else None


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first offending field and why."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown field"
    else:
        msg = first.get("msg", "invalid value")
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_config(cls: type[C], data: Any, source: str = "config") -> C:
    """Validate a mapping into ``cls``; raise :class:`PaintError` with one line on failure."""
    if not isinstance(data, dict):
        raise PaintError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise PaintError(format_validation_error(e, source)) from None


def load_config(cls: type[C], path: str | Path, overrides: dict[str, Any] | None = None) -> C:
    """Read a YAML config file, apply ``overrides`` (top-level keys), validate."""
    p = Path(path)
    if not p.is_file():
        raise PaintError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PaintError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if overrides:
        if not isinstance(data, dict):
            raise PaintError(f"{p}: expected a mapping of fields")
        data = {**data, **overrides}
    return parse_config(cls, data, str(p))


def dump_config(cfg: StrictModel, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    write_yaml_atomic(path, cfg.model_dump(mode="json"))
