"""paint scale [CONFIG.yaml]: the scale study (PAINT's RQ2) on a ladder of models, several seeds."""

from __future__ import annotations

import argparse

from paint.commands._shared import add_race_option, add_set_option, load_run_config
from paint.studies.scale import ScaleConfig, run_scale


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config (models, seeds, patch_tasks, support_tasks, multitask_tasks, finetune, selection); "
        "without one, the defaults: paint:tiny, paint:default, paint:medium, 3 seeds (examples/scale.yaml spells them out)",
    )
    p.add_argument("--resume", action="store_true", help="continue in the same output_dir; finished cells are kept")
    p.add_argument("--output-dir", help="override output_dir (default runs/scale)")
    p.add_argument(
        "--report",
        action="store_true",
        help="run no cell: write scale.md / scale.json / scale.png from the cells finished so far",
    )
    add_set_option(p)
    add_race_option(p)


def config(args: argparse.Namespace) -> ScaleConfig:
    """The run's validated config: the YAML file, then --set, then the flags."""

    return load_run_config(ScaleConfig, args.config, {"output_dir": args.output_dir}, args)


def run(args: argparse.Namespace) -> int:

    cfg = config(args)

    def done(model: str, seed: int, rec: dict) -> None:
        print(f"cell {model} seed {seed}: done ({rec['seconds']:.0f} s)", flush=True)

    summary = run_scale(cfg, resume=args.resume, on_cell=done, report_only=args.report)
    print(summary["table"])
    if summary["missing_cells"]:
        print(f"not run yet: {len(summary['missing_cells'])} cells (paint scale --resume runs them)")
    print(f"outputs: {cfg.output_dir}/ (scale.md, scale.json, scale.png, <model>/seed-<s>/)")
    return 0
