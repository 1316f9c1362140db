"""Config plumbing: frozen pydantic models validated at the edge, round-tripping to YAML.

Every config class derives from :class:`StrictModel` (unknown fields and wrong types are
errors). :func:`load_config` turns a YAML file into a validated config and every
validation problem into one :class:`PaintError` line that names the field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def load_config(cls: type[C], path: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> C:
    """Read a YAML config file, apply ``overrides`` (top-level keys) and ``sets`` (``--set a.b=v``), validate."""
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
    if sets:
        if not isinstance(data, dict):
            raise PaintError(f"{p}: expected a mapping of fields")
        data = apply_overrides(cls, data, sets)
    return parse_config(cls, data, str(p))


def dump_config(cfg: StrictModel, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    write_yaml_atomic(path, cfg.model_dump(mode="json"))


# --- command-line overrides: ``--set finetune.epochs=2`` --------------------------------------

ThreadsSetting = Annotated[int, Field(ge=1)] | Literal["auto"]
"""The ``threads`` field of run configs: ``auto`` (idle cores, see :mod:`paint.runtime`) or a count."""


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` -> (["a", "b"], VALUE parsed as a YAML scalar or flow collection)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise PaintError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. --set finetune.epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise PaintError(f"--set {key}: value {raw!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    return key.split("."), value


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (``X``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def check_override_key(cls: type[BaseModel], path: list[str]) -> None:
    """Raise a one-line :class:`PaintError` when ``path`` names no field of ``cls`` (nested models followed)."""
    model: type[BaseModel] | None = cls
    for i, part in enumerate(path):
        if model is None:  # a free-form mapping (e.g. merge parameters): any key
            return
        fields = model.model_fields
        where = ".".join(path[:i]) or "the config"
        if part not in fields:
            raise PaintError(f"--set {'.'.join(path)}: unknown key {part!r} in {where} (known: {', '.join(sorted(fields))})")
        annotation = fields[part].annotation
        model = _model_in(annotation)
        origin = get_origin(annotation)
        if i < len(path) - 1 and model is None and origin not in (dict, Mapping) and annotation is not dict:
            raise PaintError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} has no sub-keys; set it whole, "
                             f"e.g. --set {'.'.join(path[: i + 1])}=[a, b]")


def apply_overrides(cls: type[BaseModel], data: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """``data`` with every ``--set KEY=VALUE`` applied (checked against ``cls``), as a new mapping."""
    out = copy.deepcopy(data)
    for item in items or ():
        path, value = parse_set(item)
        check_override_key(cls, path)
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # absent (default) or given in a short form: the override starts a mapping
            node = node[part]
        node[path[-1]] = value
    return out
