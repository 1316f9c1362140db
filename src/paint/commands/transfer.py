"""paint transfer CONFIG.yaml: patch on each task of a list, evaluate on all of them."""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (model, output_dir, tasks, support_tasks, finetune, search)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in the same output_dir")
    p.add_argument("--output-dir", help="override output_dir from the config")


def run(args: argparse.Namespace) -> int:
    from paint.config import load_config
    from paint.studies.transfer import TransferConfig, run_transfer

    overrides = {"output_dir": args.output_dir} if args.output_dir else None
    cfg = load_config(TransferConfig, args.config, overrides)
    summary = run_transfer(cfg, resume=args.resume)
    print("test accuracy change after patching (points; rows: patched on, columns: evaluated on)")
    print(summary["table"])
    print(f"outputs: {cfg.output_dir}/ (transfer.md, transfer.json, transfer.png)")
    return 0
