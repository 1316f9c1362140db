"""What config-driven commands share: ``--set`` overrides, and threads from the flag or the config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from paint.config import apply_overrides, load_config, parse_config
from paint.data.builtin import builtin_task_names
from paint.data.catalog import catalog_entry, default_data_root, locate
from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.runtime import apply_threads, parse_threads, resolve_threads


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


def add_race_option(p: argparse.ArgumentParser) -> None:
    """``--no-race``: every grid alpha reads every validation image (``--set selection.race=null``)."""
    p.add_argument(
        "--no-race",
        action="store_true",
        help="evaluate every grid alpha on every validation image (selection.race: null); by default the grid is "
        "raced on the images not right at both alpha 0 and 1, the winner confirmed on all of them",
    )


def selection_sets(args: argparse.Namespace) -> None:
    """Turn ``--rule`` / ``--constraint`` into ``--set selection.*`` items (the case studies' flags).

    ``--rule mean`` is ``selection.objective: mean_accuracy``; ``--rule constrained`` is the default
    objective; ``--constraint`` is ``selection.constraint``. Appended to ``args.set``, so the flags are
    validated like the config file's fields.
    """
    objective = {"mean": "mean_accuracy", "constrained": "constrained"}
    items = list(getattr(args, "set", None) or [])
    if getattr(args, "rule", None):
        items.append(f"selection.objective={objective[args.rule]}")
    if getattr(args, "constraint", None):
        items.append(f"selection.constraint={args.constraint}")
    args.set = items


def add_run_options(
    p: argparse.ArgumentParser,
    config_help: str,
    resume_help: str = "continue an unfinished run in the same output_dir",
) -> None:
    """The arguments of every run command that reads a YAML config: CONFIG, --resume, --output-dir, --set."""
    p.add_argument("config", help=config_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--output-dir", help="override output_dir from the config")
    add_set_option(p)
    add_race_option(p)


def load_run_config(cls: type, path: str | None, overrides: dict[str, Any], args: argparse.Namespace) -> Any:
    """The config from an optional YAML file, flags (those not None) on top, then ``--set`` items; threads applied.

    ``--no-race`` is the last ``--set`` item, ``selection.race=null``.

    ``--threads`` (when given) overrides the config's ``threads`` field, so the resolved config
    written beside the results records the setting the run used.
    """

    given = {k: v for k, v in overrides.items() if v is not None}
    threads = getattr(args, "threads", None)
    if threads is not None and "threads" in cls.model_fields:
        given["threads"] = _threads_for(cls, threads)
    sets = list(getattr(args, "set", None) or [])
    if getattr(args, "no_race", False):
        sets.append("selection.race=null")
    if path:
        cfg = load_config(cls, path, given, sets)
    else:
        cfg = parse_config(cls, apply_overrides(cls, given, sets), "command line")
    apply_threads(threads if threads is not None else getattr(cfg, "threads", None), defer=True)
    return cfg


def _threads_for(cls: type, threads: object) -> object:
    """The flag's value in the form the config field takes (a field that is a plain count gets auto resolved)."""
    from pydantic import TypeAdapter, ValidationError

    value = parse_threads(threads)
    if value == "auto":
        try:
            TypeAdapter(cls.model_fields["threads"].annotation).validate_python("auto")
        except ValidationError:
            return resolve_threads("auto")[0]
    return value


# --- task specs from the command line -----------------------------------------------------------

TASK_HELP = (
    "task: a built-in name, a catalog name (read from --root), a folder of class sub-folders (./NAME when it is "
    "named like a task), a .csv of path,label rows, hf:DATASET, a YAML/JSON file (one task spec, a list, or a "
    "config's *_tasks), or an inline mapping such as '{name: pets, source: folder, path: ~/pets}' (repeatable)"
)


def _hf_dir(path) -> bool:
    """A Hugging Face ``save_to_disk`` / parquet directory rather than an image-folder tree."""
    return any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")) or any(
        path.glob("*.parquet")
    )


def _specs_from_yaml(data: object, where: str) -> list:
    """Task specs from parsed YAML: one mapping, a list, or a run config's task fields."""

    if isinstance(data, dict) and "name" not in data:
        keys = [k for k in ("patch_tasks", "support_tasks", "tasks", "transfer_tasks", "patch_task") if k in data]
        if not keys:
            raise PaintError(f"{where}: expected a task spec (with name:), a list of them, or a config with *_tasks")
        data = [t for k in keys for t in (data[k] if isinstance(data[k], list) else [data[k]])]
    items = data if isinstance(data, list) else [data]
    return [parse_config(TaskSpec, TaskSpec._from_string(t) if isinstance(t, str) else t, where) for t in items]


def task_specs(value: str, root: str | None = None) -> list:
    """The :class:`paint.data.spec.TaskSpec` (one or several) that a ``--task`` value names.

    The same specs as configs accept; a bare word is a built-in, else a catalog task read from
    ``root`` (``$PAINT_DATA`` or ``~/data`` by default).
    """

    import yaml

    text = value.strip()
    if text.startswith(("{", "[")):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PaintError(f"--task {value!r}: not valid YAML ({str(e).splitlines()[0]})") from None
        return _specs_from_yaml(data, "--task")
    if text.startswith("hf:"):
        return [TaskSpec(name=text[3:].rstrip("/").split("/")[-1], source="hf", path=text[3:])]

    bare = "/" not in text and "\\" not in text and not text.startswith((".", "~"))
    if bare and text in builtin_task_names():  # a name wins over a same-named folder in the working directory
        return [TaskSpec(name=text)]
    entry = None
    if bare:
        try:
            entry = catalog_entry(text)
        except PaintError:
            entry = None
    path = Path(text).expanduser()
    if entry is None and path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise PaintError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        return _specs_from_yaml(data, str(path))
    if entry is None and path.suffix.lower() == ".csv" and path.is_file():
        return [TaskSpec(name=path.stem, source="csv", path=str(path))]
    if entry is None and path.is_dir():
        return [TaskSpec(name=path.resolve().name, source="hf" if _hf_dir(path) else "folder", path=str(path))]
    if entry is None:
        raise PaintError(
            f"--task {value!r} is not a built-in ({', '.join(builtin_task_names())}), a catalog task (paint tasks), "
            "an existing folder, .csv or YAML file, hf:DATASET, or an inline mapping"
        )
    data_root = Path(root).expanduser() if root else default_data_root()
    found = locate(entry, data_root)
    if found is None:
        raise PaintError(
            f"catalog task {entry.name!r} not found under {data_root}; put it there (paint tasks show "
            f"{entry.name} gives the layout) or pass --root DIR"
        )
    return [TaskSpec(name=entry.name, source="catalog", path=str(found))]


def with_names(spec, classnames: list[str] | None, templates: list[str] | None):
    """``spec`` with class names and templates given on the command line (configs are frozen: a copy)."""

    update = {}
    if classnames:
        update["classnames"] = classnames
    if templates:
        update["templates"] = templates
    if not update:
        return spec
    return parse_config(type(spec), {**spec.model_dump(exclude_unset=True), **update}, f"task {spec.name!r}")


def warn_without_support(command: str, cfg) -> None:
    """One warning when a run has no support tasks: then nothing guards the accuracy the patch may cost."""

    if getattr(cfg, "support_tasks", None):
        return
    print(
        f"paint {command}: warning: no support_tasks, so alpha is chosen on the patching task alone and nothing "
        "measures what the patch costs elsewhere; add tasks the model must keep, e.g. support_tasks: [shapes, colours] "
        "in the config or --set 'support_tasks=[shapes, colours]'",
        file=sys.stderr,
    )
