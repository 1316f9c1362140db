"""paint triage [CONFIG.yaml] --output-dir DIR: linear probe vs zero-shot per task -> patch / support."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_set_option, load_run_config
from paint.config import parse_config
from paint.studies.triage import TriageConfig, run_triage, triage_table


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="optional YAML config (the fields of paint.studies.triage.TriageConfig)")
    p.add_argument("--output-dir", help="run directory (config.yaml, results.jsonl, triage.json, triage.md, kshot.png)")
    p.add_argument("--model", help="HF CLIP directory, hub id, or paint:default (the default)")
    p.add_argument("--task", action="append", help="built-in task name (repeatable; default: every built-in task)")
    p.add_argument("--shots", type=int, nargs="+", help="k values of the few-shot curve (default: 1 2 4 8 16)")
    p.add_argument("--draws", type=int, help="random k-shot draws per k (default: 3)")
    p.add_argument(
        "--threshold", type=float, help="points by which the probe must beat zero-shot for 'patch' (default: 10)"
    )
    p.add_argument("--max-train", type=int, help="use at most this many training images per task")
    p.add_argument("--max-eval", type=int, help="use at most this many validation and test images per task")
    p.add_argument("--cache-dir", help="where preprocessed images and heads are cached")
    p.add_argument("--resume", action="store_true", help="continue the run in the same output directory")
    add_set_option(p)


def with_epochs(cfg, epochs: int | None):
    """``cfg`` with ``finetune.epochs`` replaced (configs are frozen, so a validated copy)."""
    if epochs is None:
        return cfg

    data = cfg.model_dump()
    data["finetune"]["epochs"] = epochs
    return parse_config(type(cfg), data, "command line")


def config(args: argparse.Namespace) -> TriageConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    overrides = {
        "output_dir": args.output_dir,
        "model": args.model,
        "tasks": args.task,
        "shots": args.shots,
        "draws": args.draws,
        "threshold": args.threshold,
        "max_train": args.max_train,
        "max_eval": args.max_eval,
        "cache_dir": args.cache_dir,
    }
    return load_run_config(TriageConfig, args.config, overrides, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    summary = run_triage(cfg, resume=args.resume)
    print(triage_table(summary["tasks"], cfg.shots, cfg.threshold))
    print(f"outputs: {cfg.output_dir}/ (triage.md, triage.json, kshot.png, results.jsonl, config.yaml)")
    return 0
