"""paint transfer CONFIG.yaml: patch on each task of a list, evaluate on all of them."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_run_options, load_run_config
from paint.studies.transfer import TransferConfig, run_transfer


def register(p: argparse.ArgumentParser) -> None:
    add_run_options(p, "YAML config (model, output_dir, tasks, support_tasks, finetune, selection)")


def config(args: argparse.Namespace) -> TransferConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    return load_run_config(TransferConfig, args.config, {"output_dir": args.output_dir}, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    summary = run_transfer(cfg, resume=args.resume)
    print("test accuracy change after patching (points; rows: patched on, columns: evaluated on)")
    print(summary["table"])
    print(f"outputs: {cfg.output_dir}/ (transfer.md, transfer.json, transfer.png)")
    return 0
