"""paint transfer CONFIG.yaml: patch on each task of a list, evaluate on all of them."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_set_option


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (model, output_dir, tasks, support_tasks, finetune, search)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in the same output_dir")
    p.add_argument("--output-dir", help="override output_dir from the config")
    add_set_option(p)


def run(args: argparse.Namespace) -> int:
    from paint.commands._shared import load_run_config
    from paint.studies.transfer import TransferConfig, run_transfer

    cfg = load_run_config(TransferConfig, args.config, {"output_dir": args.output_dir}, args)
    summary = run_transfer(cfg, resume=args.resume)
    print("test accuracy change after patching (points; rows: patched on, columns: evaluated on)")
    print(summary["table"])
    print(f"outputs: {cfg.output_dir}/ (transfer.md, transfer.json, transfer.png)")
    return 0
