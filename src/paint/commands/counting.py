"""paint counting [CONFIG.yaml] --output-dir DIR: patch counting, test on counts held out of fine-tuning."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_race_option, add_set_option, load_run_config, selection_sets
from paint.commands.triage import with_epochs
from paint.studies.counting import CountingConfig, counting_table, run_counting


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="optional YAML config (the fields of paint.studies.counting.CountingConfig)"
    )
    p.add_argument(
        "--output-dir", help="run directory (config.yaml, results.jsonl, summary.json, summary.md, counting.png)"
    )
    p.add_argument("--model", help="HF CLIP directory, hub id, or paint:default (the default)")
    p.add_argument("--heldout", type=int, nargs="+", help="counts kept out of fine-tuning (default: 5 10)")
    p.add_argument(
        "--support",
        action="append",
        help="support task (repeatable; default: shapes colours rendered-digits backgrounds)",
    )
    p.add_argument("--max-train", type=int, help="use at most this many training images")
    p.add_argument("--max-eval", type=int, help="use at most this many images per validation/test split")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (overrides finetune.epochs)")
    p.add_argument("--rule", choices=["mean", "constrained"], help="alpha selection rule (default: constrained)")
    p.add_argument(
        "--constraint",
        choices=["each", "mean"],
        help="constrained rule: bound each support task or their mean (default: mean)",
    )
    p.add_argument("--cache-dir", help="where preprocessed images and heads are cached")
    p.add_argument("--resume", action="store_true", help="continue the run in the same output directory")
    add_set_option(p)
    add_race_option(p)


def config(args: argparse.Namespace) -> CountingConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    overrides = {
        "output_dir": args.output_dir,
        "model": args.model,
        "heldout": args.heldout,
        "support_tasks": args.support,
        "max_train": args.max_train,
        "max_eval": args.max_eval,
        "cache_dir": args.cache_dir,
    }
    selection_sets(args)
    return with_epochs(load_run_config(CountingConfig, args.config, overrides, args), args.epochs)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    summary = run_counting(cfg, resume=args.resume)
    if cfg.seeds is not None:
        print(f"test accuracy (%) over seeds {summary['seeds']}, mean ± 95% t half-width")
        print(summary["table"])
    else:
        print(f"chosen alpha: {summary['alpha']:.3g} ({summary['selection']['rule']} rule)")
        print(counting_table(summary))
    print(f"outputs: {cfg.output_dir}/ (summary.md, summary.json, counting.png, results.jsonl, config.yaml)")
    return 0
