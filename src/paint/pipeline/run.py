"""Opening a run directory: refuse or resume, then write the resolved config (before any work).

Every workflow opens its output directory through :func:`open_run`, so the refuse/resume
rules and the resolved ``config.yaml`` are the same everywhere; the finished-run marker
(``summary.json`` or a study's own) is written last by the workflow.
"""

from __future__ import annotations

from pathlib import Path

from paint.config import StrictModel, dump_config
from paint.errors import PaintError

SUMMARY = "summary.json"


def check_output_dir(out: Path, resume: bool, marker: str = SUMMARY) -> None:
    """Refuse to overwrite a finished run, or to silently restart an unfinished one."""
    if not out.exists() or not any(out.iterdir()):
        return
    if resume:
        return
    if (out / marker).exists():
        raise PaintError(f"{out} already holds a finished run; choose a new output_dir (or pass --resume to redo its reports)")
    raise PaintError(f"{out} holds an unfinished run; pass --resume to continue it, or choose a new output_dir")


def open_run(out: Path, cfg: StrictModel, resume: bool, marker: str = SUMMARY) -> Path:
    """Create (or reopen, with ``resume``) the run directory and write the resolved config."""
    check_output_dir(out, resume, marker)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    return out
