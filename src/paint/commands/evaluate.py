"""paint eval --model M --task T [--task T2 ...]"""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="paint:default", help="HF CLIP directory, hub id, or paint:default")
    p.add_argument("--task", action="append", required=True, help="built-in task name (repeatable)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", default=None, help="where preprocessed images and heads are cached")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from paint.data.preprocess import preprocess_split
    from paint.data.registry import load_task
    from paint.data.spec import TaskSpec
    from paint.evaluation.results import evaluate_split
    from paint.models.clip import load_clip
    from paint.models.heads import zeroshot_head

    bundle = load_clip(args.model)
    cache = Path(args.cache_dir) if args.cache_dir else None
    results = {}
    for name in args.task:
        task, _ = load_task(TaskSpec(name=name))
        split = task.split(args.split)
        images = preprocess_split(split, bundle.spec, cache_dir=cache / "images" if cache else None)
        head = zeroshot_head(bundle, task.classnames, task.templates, cache_dir=cache)
        results[name] = evaluate_split(bundle.model, head, images, split.labels, bundle.spec, args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"| task | {args.split} accuracy (%) | loss | n |\n|---|---|---|---|")
        for name, m in results.items():
            print(f"| {name} | {100 * m['accuracy']:.1f} | {m['loss']:.3f} | {m['n']} |")
    return 0
