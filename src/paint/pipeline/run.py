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


class ModelRunConfig(CachedRun, SelectionFields):
    """The fields every run on a model shares (``paint patch``, ``multitask``, ``transfer``, ``compare``).

    The model and where it comes from, where outputs and caches go, evaluation batch, device and
    CPU threads; ``selection`` (one default everywhere) comes from :class:`SelectionFields`.
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    output_dir: str
    eval_batch_size: int = Field(256, ge=1)
    cache_dir: str | None = None  # preprocessed images and heads; default: <output_dir>/cache
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: ThreadsSetting = "auto"  # torch CPU threads (paint.runtime); read by the CLI at start
    num_workers: NumWorkers = None  # threads decoding images (paint.data.parallel); None: automatic
