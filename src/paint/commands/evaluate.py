"""paint eval --model M --task T [--task T2 ...]: zero-shot top-1/top-5, per-class accuracy, confusions.

``--task`` takes the same task specs as configs (a built-in, a catalog task under ``--root``, a
folder, a CSV, ``hf:ID``, a YAML file or an inline mapping), so a user can measure a model on
their own data before deciding to patch it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from paint.commands._shared import TASK_HELP, task_specs, with_names
from paint.config import check_bounded
from paint.data.builtin import builtin_task_names
from paint.data.preprocess import preprocess_split
from paint.data.registry import load_task
from paint.data.task import SubsetSplit
from paint.errors import PaintError
from paint.evaluation.classification import classification_report, report_markdown
from paint.evaluation.results import predict
from paint.models.clip import load_clip
from paint.models.heads import zeroshot_head
from paint.pipeline.run import ModelRunConfig
from paint.progress import phase
from paint.utils import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from paint.data.spec import TaskSpec


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="paint:default",
        help="HF CLIP directory, hub id, or a shipped name (paint:default, paint:tiny, paint:medium, paint:siglip)",
    )
    p.add_argument("--task", action="append", required=True, help=TASK_HELP)
    p.add_argument("--root", help="data root of catalog tasks (default $PAINT_DATA or ~/data)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--classnames", help="class names, comma-separated or @FILE with one per line (replaces the task's)")
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable; replaces the task's)")
    p.add_argument("--limit", type=int, help="evaluate a random subset of N images per task (seed 0)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", default=None, help="where preprocessed images and heads are cached")
    p.add_argument("--out", help="write eval.json and eval.md (table, per-class accuracy, confusions) to DIR")
    p.add_argument(
        "--json", nargs="?", const="-", metavar="FILE", help="write the full report as JSON to FILE (no FILE: print it)"
    )


def _classnames(value: str | None) -> list[str] | None:

    if not value:
        return None
    if value.startswith("@"):
        f = Path(value[1:]).expanduser()
        if not f.is_file():
            raise PaintError(f"--classnames: file {f} does not exist")
        names = [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise PaintError("--classnames: no class names given")
    return names


def _flag_types() -> dict[str, tuple[str, object]]:
    """flag -> (argument name, the type it is validated as): the config field it matches, where there is one."""

    from pydantic import Field

    batch = ModelRunConfig.model_fields["eval_batch_size"]  # what a config's eval_batch_size accepts
    return {
        "--batch-size": ("batch_size", Annotated[batch.annotation, batch]),
        "--limit": ("limit", Annotated[int | None, Field(ge=1)]),
    }


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag validated as its config field is (bounds, int64 range), before any work: one line."""
    from pydantic import TypeAdapter, ValidationError

    for flag, (name, kind) in _flag_types().items():
        value = getattr(args, name)
        try:
            TypeAdapter(kind).validate_python(value)
            check_bounded(value, name)
        except ValidationError as e:
            raise PaintError(f"{flag}: {e.errors()[0]['msg'].lower()}, got {value}") from None
        except ValueError as e:
            raise PaintError(f"{flag}: {e}") from None


def task_origin(spec: "TaskSpec", builtins: tuple[str, ...]) -> str:
    """Where a task's images come from, in words; a task given by path that is named like a built-in says it is not one."""
    where = {
        "builtin": "built-in task (generated or shipped by paint)",
        "catalog": f"catalog task read from {spec.path}",
        "folder": f"image folder {spec.path}",
        "csv": f"CSV file {spec.path}",
        "hf": f"Hugging Face dataset {spec.path}",
    }[spec.source]
    if spec.source != "builtin" and spec.name in builtins:
        where += f" (not the built-in {spec.name!r})"
    return where


def origins_markdown(origins: dict[str, str]) -> str:
    """The data block under the table: one line per task naming its source."""
    return "data:\n" + "\n".join(f"- {name}: {origin}" for name, origin in origins.items())


def _subset(split, limit: int | None):
    """A seeded random subset (a folder's first N images would often be one class)."""
    import numpy as np

    if limit is None:
        return split
    if limit < 1:  # check_flags refuses it from the command line; this guards other callers
        raise PaintError(f"--limit must be at least 1, got {limit}")
    if limit >= len(split):
        return split
    idx = np.sort(np.random.default_rng(0).choice(len(split), size=limit, replace=False))
    return SubsetSplit(split, idx, f"{split.identity}/random{limit}")


def run(args: argparse.Namespace) -> int:

    check_flags(args)
    if args.template and any("{}" not in t for t in args.template):
        raise PaintError("--template needs a {} where the class name goes, e.g. 'a photo of a {}.'")
    names = _classnames(args.classnames)
    specs = [with_names(s, names, args.template) for value in args.task for s in task_specs(value, args.root)]
    seen = [s.name for s in specs]
    if len(set(seen)) != len(seen):
        raise PaintError(f"task {next(n for n in seen if seen.count(n) > 1)!r} is given twice")
    bundle = load_clip(args.model)
    cache = Path(args.cache_dir) if args.cache_dir else None
    builtins = builtin_task_names()
    results, sources, origins = {}, {}, {}
    for spec in specs:
        with phase(f"eval {spec.name}"):
            task, _ = load_task(spec, warn_small_val=False)  # eval chooses no alpha: small splits are no concern
            split = _subset(task.split(args.split), args.limit)
            images = preprocess_split(split, bundle.spec, cache_dir=cache / "images" if cache else None, progress=True)
            head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cache)
            bundle.model.eval()
            logits = predict(bundle.model, head, images, bundle.spec, args.batch_size)
        results[spec.name] = classification_report(logits, split.labels, task.classnames)
        origins[spec.name] = task_origin(spec, builtins)
        sources[spec.name] = {
            **spec.model_dump(mode="json", exclude_defaults=True),
            "source": spec.source,
            "origin": origins[spec.name],
        }
    report = {"model": args.model, "split": args.split, "limit": args.limit, "tasks": sources, "results": results}
    table = f"{report_markdown(results, args.split)}\n\n{origins_markdown(origins)}"
    if args.out:
        out = Path(args.out)
        write_json_atomic(out / "eval.json", report)
        write_text_atomic(out / "eval.md", f"# paint eval: {args.model}\n\n{table}\n")
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    if args.json:
        write_json_atomic(args.json, report)
    print(table)
    written = [str(p) for p in ((Path(args.out) / "eval.json", Path(args.out) / "eval.md") if args.out else ())]
    written += [args.json] if args.json else []
    if written:
        print(f"\nwritten: {', '.join(written)}")
    return 0
