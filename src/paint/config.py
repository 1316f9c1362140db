"""Config plumbing: frozen pydantic models validated at the edge, round-tripping to YAML.

Every config class derives from :class:`StrictModel` (unknown fields and wrong types are
errors). :func:`load_config` turns a YAML file into a validated config and every
validation problem into one :class:`PaintError` line that names the field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from paint.errors import PaintError
from paint.utils import write_yaml_atomic

C = TypeVar("C", bound="StrictModel")

SEED_MAX = 2**32 - 1  # NumPy's legacy seeding takes [0, 2**32 - 1]; torch, random and Accelerate accept it
INT_LIMIT = 2**63 - 1  # what a torch / NumPy int64 holds: a larger count or size overflows deep inside


def check_bounded(value: Any, field_name: str) -> Any:
    """Refuse non-finite floats anywhere in a value, ints beyond int64, and seeds outside [0, 2**32 - 1].

    Walks lists, tuples and dicts iteratively (free-form mappings such as a model's
    architecture hold numbers too, and a deep structure must not exhaust the stack).
    """
    if field_name.endswith("seed") and isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= SEED_MAX:
            raise ValueError(f"a seed must be an integer in [0, {SEED_MAX}], got {value}")
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        if isinstance(v, int) and abs(v) > INT_LIMIT:
            raise ValueError(
                f"must be an integer of at most {INT_LIMIT} in magnitude, got one with {len(str(abs(v)))} digits"
            )
        if isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return value


class StrictModel(BaseModel):
    """Base for every config: frozen, no unknown fields, strict-ish types, bounded numbers.

    ``allow_inf_nan=False`` refuses ``.inf``/``.nan`` in float fields (``lr: .inf`` would
    train to NaN weights and exit 0); :func:`check_bounded` covers the rest (numbers inside
    free-form fields, int64 overflow, seeds) for every field of every subclass.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        return check_bounded(value, info.field_name or "")


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
    except RecursionError:
        raise PaintError(f"{source}: nested too deeply to be a config") from None


def load_config(
    cls: type[C], path: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None
) -> C:
    """Read a YAML config file, apply ``overrides`` (top-level keys) and ``sets`` (``--set a.b=v``), validate."""
    p = Path(path)
    if p.is_dir():
        raise PaintError(f"config file {p} is a directory; give the path of a YAML file")
    if not p.is_file():
        raise PaintError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PaintError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise PaintError(
            f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    except RecursionError:
        raise PaintError(f"{p}: nested too deeply to be a config") from None
    except OSError as e:
        raise PaintError(f"cannot read config file {p}: {e.strerror or e}") from None
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

NumWorkers = Annotated[int, Field(ge=0)] | None
"""The ``num_workers`` field of run configs: threads decoding images at preprocessing (see
:mod:`paint.data.parallel`); ``None``: one per core, at most 8, kept only where the first images decode
faster that way; N: N threads; 0 or 1: none. Results do not depend on it."""


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


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model class of an annotation (several for a union such as ``finetune.recipe``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def check_override_key(cls: type[BaseModel], path: list[str]) -> None:
    """Raise a one-line :class:`PaintError` when ``path`` names no field of ``cls`` (nested models followed)."""
    models: list[type[BaseModel]] = [cls]
    for i, part in enumerate(path):
        if not models:  # a free-form mapping (e.g. merge parameters): any key
            return
        fields = {k: f for m in reversed(models) for k, f in m.model_fields.items()}  # a union: any member's key
        where = ".".join(path[:i]) or "the config"
        if part not in fields:
            raise PaintError(
                f"--set {'.'.join(path)}: unknown key {part!r} in {where} (known: {', '.join(sorted(fields))})"
            )
        annotation = fields[part].annotation
        models = [m for mm in models if part in mm.model_fields for m in _models_in(mm.model_fields[part].annotation)]
        model = models[0] if models else None
        origin = get_origin(annotation)
        if i < len(path) - 1 and model is None and origin not in (dict, Mapping) and annotation is not dict:
            raise PaintError(
                f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} has no sub-keys; set it whole, "
                f"e.g. --set {'.'.join(path[: i + 1])}=[a, b]"
            )


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
