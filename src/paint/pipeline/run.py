"""Opening a run directory: refuse or resume, lock, then write the resolved config (before any work).

Every workflow opens its output directory through :func:`open_run` (a :class:`RunDir` from
:mod:`paint.pipeline.rundir`: refusal rules, an exclusive lock held until the run function
returns, the config compared on resume before anything is written, stale temporaries of a killed
run removed), so these rules are the same everywhere. Run functions are decorated with
:func:`paint.pipeline.rundir.run_scope`, which releases the lock however they end; the
finished-run marker (``summary.json`` or a study's own) is written last by the workflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from paint.config import CachedRun, NumWorkers, ThreadsSetting
from paint.models.clip import DEFAULT_MODEL
from paint.pipeline.rundir import RunDir
from paint.selection import SelectionFields
from paint.train.recipes.config import RUNTIME_ONLY
from paint.utils import sha256_strings

SUMMARY = "summary.json"


def config_identity(cfg: BaseModel, exclude: Iterable[str] = ()) -> str:
    """A run config as JSON for its fingerprint, without what never changes a result.

    Left out: decoding threads (``num_workers``), the fine-tuning settings that only change speed
    (:data:`paint.train.recipes.config.RUNTIME_ONLY`), and ``exclude``; a resume may change them.
    """
    fields = type(cfg).model_fields
    drop: dict[str, Any] = {k: True for k in ("num_workers", *exclude) if k in fields}
    if "finetune" in fields:
        drop["finetune"] = dict.fromkeys(RUNTIME_ONLY, True)
    return cfg.model_dump_json(exclude=drop)


def check_output_dir(out: Path, resume: bool, marker: str = SUMMARY) -> None:
    """Refuse to overwrite a finished run, or to silently restart an unfinished one (nothing is written)."""
    RunDir(out, marker).check(resume)


def open_run(out: Path, cfg: Any, resume: bool, marker: str = SUMMARY) -> RunDir:
    """Check, lock, compare the config on resume, then write the resolved config."""
    return RunDir(out, marker).start(cfg, resume)


class RunFields(CachedRun, SelectionFields):
    """The fields every run on models shares, whatever its model field: where the weights come from
    (``revision``), where outputs and caches go, evaluation batch, device and CPU threads;
    ``selection`` (one default everywhere) comes from :class:`SelectionFields`. ``paint scale`` (a
    list of models) builds on it; every run on one model on :class:`ModelRunConfig`.
    """

    revision: str | None = None
    output_dir: str
    eval_batch_size: int = Field(256, ge=1)
    cache_dir: str | None = None  # preprocessed images and heads; default: <output_dir>/cache
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: ThreadsSetting = "auto"  # torch CPU threads (paint.runtime); read by the CLI at start
    num_workers: NumWorkers = None  # threads decoding images (paint.data.parallel); None: automatic


class ModelRunConfig(RunFields):
    """The fields every run on one model shares (``paint patch``, ``multitask``, ``transfer``,
    ``compare``, ``counting``, ``typographic``): the model, and :class:`RunFields`."""

    model: str = DEFAULT_MODEL


def run_fingerprint(kind: str | None, cfg: BaseModel | None, *parts: str, exclude: Iterable[str] = ()) -> str:
    """The one fingerprint of a run's inputs: ``kind`` (a versioned tag, or None), content hashes, the config.

    A checkpoint or result made under another fingerprint is refused on resume. ``parts`` are
    content hashes of what the run reads (a model's towers, a task's training split); ``cfg`` enters
    through :func:`config_identity` (what never changes a result is left out, and ``exclude``).
    """
    tag = [kind] if kind else []
    text = [config_identity(cfg, exclude)] if cfg is not None else []
    return sha256_strings([*tag, *parts, *text])


def check_recipe_fits_selection(finetune: Any, selection: Any, where: str = "") -> None:
    """Refuse, at config validation, a selection the recipe's line cannot use (before any work).

    ``derivative`` differentiates along the image tower only; ``lp-ft`` (learned heads) and ``flyp``
    (the text tower) interpolate more than that. ``where`` prefixes the message (e.g. a recipe label).
    """

    flags = finetune.recipe.coverage()
    if selection.uses_derivative and (flags.text_tower or flags.learns_heads):
        extra = "the text tower" if flags.text_tower else "the patching tasks' learned heads"
        raise ValueError(
            f"{where}recipe {finetune.recipe.name!r} interpolates {extra} as well as the image tower, and strategy "
            f"{selection.strategy!r} (objective {selection.objective!r}) differentiates along the image tower only; "
            "choose another selection.strategy"
        )


def finetune_configs(cfg: Any) -> list[Any]:
    """Every fine-tuning config a run config will use: its ``finetune``, and each recipe's (paint compare)."""
    out = [cfg.finetune] if "finetune" in type(cfg).model_fields else []
    if "recipes" in type(cfg).model_fields:
        out += [cfg.recipe_config(r) for r in cfg.recipes]
    return out
