"""paint merge CONFIG.yaml: merge checkpoints (linear, task arithmetic, TIES, DARE, model stock, Iso-C/CTS, TSV-M), streamed."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_set_option, load_run_config
from paint.pipeline.merge import MergeConfig, merge_evaluator, run_merge


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="merge config YAML (base, models with weights, method, parameters, output)")
    p.add_argument("--output", help="override the config's output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_set_option(p)


def config(args: argparse.Namespace) -> MergeConfig:
    """The merge's validated config: the YAML file, then --set, then the flags."""

    overrides: dict[str, object] = {}
    if args.output:
        overrides["output"] = args.output
    if args.overwrite:
        overrides["overwrite"] = True
    return load_run_config(MergeConfig, args.config, overrides, args)  # applies --threads


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    summary = run_merge(cfg, evaluate=merge_evaluator(cfg), progress=not args.no_progress)
    stats = summary["stats"]
    print(
        f"merged {stats['merged']} tensors ({stats['copied']} copied from the base) with {cfg.method} "
        f"into {cfg.output} ({', '.join(stats['files'])}) in {summary['seconds']:.1f}s"
    )
    evaluation = summary.get("evaluation") or {}
    if cfg.method == "greedy_soup":
        kept = evaluation["kept"]
        print(f"greedy soup kept {len(kept)} of {len(cfg.models)} models (val accuracy of the soup after each):")
        for i, k in enumerate(kept, 1):
            print(f"  {i}. {k['path']}: {100 * k['val_accuracy']:.1f}%")
    if evaluation:
        print(
            f"validation accuracy of the merge on {cfg.evaluate_on.name}: {100 * summary['evaluation']['val_accuracy']:.1f}%"
        )
    return 0
