"""paint patch CONFIG.yaml"""

from __future__ import annotations

import argparse

from paint.commands._shared import add_run_options, load_run_config, warn_without_support
from paint.pipeline.patch import PatchConfig, run_patch
from paint.pipeline.report import test_table


def register(p: argparse.ArgumentParser) -> None:
    add_run_options(p, "YAML config (see examples/patch-digits.yaml)")


def config(args: argparse.Namespace) -> PatchConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    return load_run_config(PatchConfig, args.config, {"output_dir": args.output_dir}, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    warn_without_support("patch", cfg)
    summary = run_patch(cfg, resume=args.resume)
    if not summary:  # a non-zero rank of a multi-process run: rank 0 reports
        return 0
    if "comparison" in summary:  # several patching tasks: the modes compared
        print(summary["table"])
        print(f"outputs: {cfg.output_dir}/ (comparison.md, comparison.json, <mode>/model)")
        return 0
    print(f"chosen alpha: {summary['alpha']:.3g} ({summary['selection']['rule']} rule)")
    if "block_alphas" in summary:
        print(
            "  per block (the alpha above is their mean): "
            + ", ".join(f"{b} {a:.3g}" for b, a in summary["block_alphas"].items())
        )
    print(test_table(summary["test"]))
    print(f"outputs: {cfg.output_dir}/ (summary.json, summary.md, tradeoff.png, model/)")
    return 0
