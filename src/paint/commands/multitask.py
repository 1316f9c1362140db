"""paint multitask CONFIG.yaml: patch several tasks jointly, sequentially and in parallel; compare."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_run_options, load_run_config, warn_without_support
from paint.pipeline.multitask import MultitaskConfig, run_multitask


def register(p: argparse.ArgumentParser) -> None:
    add_run_options(p, "YAML config (model, output_dir, patch_tasks, support_tasks, modes, finetune, selection)")


def config(args: argparse.Namespace) -> MultitaskConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    return load_run_config(MultitaskConfig, args.config, {"output_dir": args.output_dir}, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    warn_without_support("multitask", cfg)
    summary = run_multitask(cfg, resume=args.resume)
    print("test accuracy (%) by multi-task patching mode")
    print(summary["table"])
    print(f"outputs: {cfg.output_dir}/ (comparison.md, comparison.json, <mode>/model/)")
    return 0
