"""paint pretrain CONFIG.yaml [--resume] [--out DIR]: pretrain a CLIP on the offline world."""

from __future__ import annotations

import argparse
import json

from paint.commands._shared import add_set_option, load_run_config
from paint.pretraining.build import PretrainConfig
from paint.pretraining.run import pretrain


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML pretraining config (see configs/pretrain-default.yaml)")
    p.add_argument("--out", default="runs/pretrain", help="output directory (checkpoint, model/, log.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides the config)")
    add_set_option(p)


def config(args: argparse.Namespace) -> PretrainConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    return load_run_config(PretrainConfig, args.config, {"max_steps": args.max_steps}, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)
    final = pretrain(cfg, args.out, resume=args.resume)
    last = final["history"][-1] if final["history"] else {}
    print(
        json.dumps(
            {
                "steps": final["steps"],
                "model_dir": final["model_dir"],
                **{k: v for k, v in last.items() if k.startswith("zs_")},
            }
        )
    )
    return 0
