"""paint tasks [--root DIR] | paint tasks show NAME [--root DIR] [--json]"""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=["list", "show"], help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="catalog task to show")
    p.add_argument("--root", default=None, help="data root: DIR/<name> (or DIR itself) is checked; default $PAINT_DATA or ~/data")
    p.add_argument("--json", action="store_true", help="print JSON")


def _builtin_names() -> tuple[str, ...]:
    """Built-in task names from the lead's registry (whichever name it exports)."""
    import paint.data.builtin as builtin

    names = getattr(builtin, "BUILTIN_TASKS", None)
    if names is not None:
        return tuple(names)
    try:
        return tuple(builtin.builtin_task_names())
    except ImportError:  # the synthetic world is optional here; digits always exists
        return ("digits",)


def _builtin_classes(name: str) -> str:
    """Class count of a built-in (its splits are lazy, so loading it renders nothing)."""
    from paint.data.registry import load_task
    from paint.data.spec import TaskSpec
    from paint.errors import PaintError

    try:
        task, _ = load_task(TaskSpec(name=name))
    except (PaintError, ImportError):
        return "-"
    return str(len(task.classnames))


def run(args: argparse.Namespace) -> int:
    import json

    from paint.data.catalog import default_data_root, describe, list_catalog
    from paint.errors import PaintError

    root = args.root or str(default_data_root())
    if args.action == "show":
        if not args.name:
            raise PaintError("tasks show needs a task name, e.g. paint tasks show mnist")
        d = describe(args.name, root)
        if args.json:
            print(json.dumps(d, indent=2))
            return 0
        where = f"present at {d['path']}" if d["present"] else f"not found under {d['root_checked']}"
        print(f"{d['name']}: {d['title']}")
        print(f"  role: {d['role']} ({d['role_note']})")
        print(f"  classes ({d['n_classes']}): {', '.join(d['classnames'])}")
        print(f"  templates ({len(d['templates'])}):")
        for t in d["templates"]:
            print(f"    {t}")
        print(f"  reader: {d['reader']}; flip augmentation: {'yes' if d['augment_flip'] else 'no'}")
        print(f"  official splits: {json.dumps(d['official_splits'])}")
        print(f"  expected layout: {d['layout']}")
        print(f"  class names from: {d['sources'].get('classnames', '?')}")
        print(f"  templates from: {d['sources'].get('templates', '?')}")
        print(f"  on disk: {where}")
        return 0
    if args.name:
        raise PaintError(f"unexpected {args.name!r}; did you mean: paint tasks show {args.name}")
    rows = [(e.name, e.role, str(len(e.classnames)), "yes" if describe(e.name, root)["present"] else "no") for e in list_catalog()]
    rows += [(n, "builtin", _builtin_classes(n), "yes (built in)") for n in _builtin_names()]
    if args.json:
        print(json.dumps([dict(zip(("name", "role", "classes", "present"), r)) for r in rows], indent=2))
        return 0
    print(f"data root: {root}")
    print("| task | role | classes | present |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0
