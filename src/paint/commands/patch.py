"""paint patch CONFIG.yaml"""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see examples/patch-digits.yaml)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in the same output_dir")
    p.add_argument("--output-dir", help="override output_dir from the config")


def run(args: argparse.Namespace) -> int:
    from paint.config import load_config
    from paint.pipeline.patch import PatchConfig, run_patch
    from paint.pipeline.report import test_table

    overrides = {"output_dir": args.output_dir} if args.output_dir else None
    cfg = load_config(PatchConfig, args.config, overrides)
    summary = run_patch(cfg, resume=args.resume)
    if not summary:  # a non-zero rank of a multi-process run: rank 0 reports
        return 0
    if "comparison" in summary:  # several patching tasks: the modes compared
        print(summary["table"])
        print(f"outputs: {cfg.output_dir}/ (comparison.md, comparison.json, <mode>/model)")
        return 0
    print(f"chosen alpha: {summary['alpha']:.3g} ({summary['selection']['rule']} rule)")
    print(test_table(summary["test"]))
    print(f"outputs: {cfg.output_dir}/ (summary.json, summary.md, tradeoff.png, model/)")
    return 0
