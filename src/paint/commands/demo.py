"""paint demo: PAINT end to end on the shipped model, offline."""

from __future__ import annotations

import argparse

from paint.pipeline.report import points, test_table
from paint.studies.demo import run_demo


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/demo", help="where the run goes (default: runs/demo)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished demo run")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (a few steps, 3 alphas)")
    p.add_argument(
        "--model",
        default="paint:default",
        help="the model to patch: paint:default (the shipped CLIP), paint:tiny / paint:medium (the ladder's other rungs), "
        "paint:siglip (the shipped SigLIP) or a checkpoint",
    )


def run(args: argparse.Namespace) -> int:

    summary = run_demo(args.output_dir, quick=args.quick, resume=args.resume, model=args.model)
    sel = summary["selection"]
    print(
        f"\nchosen alpha {summary['alpha']:.3g} ({sel['rule']} rule, support within {points(sel['epsilon'])} on validation)"
    )
    print(test_table(summary["test"]))
    print(
        f"\nreport: {args.output_dir}/summary.md   plot: {args.output_dir}/tradeoff.png   model: {args.output_dir}/model"
    )
    return 0
