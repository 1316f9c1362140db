"""paint metrics RUN_DIR | paint metrics --zeroshot M --finetuned F --support T ... --cka-task T ..."""

from __future__ import annotations

import argparse
import json

from paint.data.spec import TaskSpec
from paint.errors import PaintError
from paint.studies.metrics import BKT_GRID, pair_metrics, run_metrics
from paint.utils import write_json_atomic
from paint.weights.ops import finite_coefficient


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir", nargs="?", help="a finished `paint patch` output directory (metrics.json is written there)"
    )
    p.add_argument("--zeroshot", help="zero-shot model (HF CLIP directory, hub id, paint:default); instead of RUN_DIR")
    p.add_argument(
        "--finetuned", help="fine-tuned CLIP checkpoint directory, or a .safetensors file of image-tower tensors"
    )
    p.add_argument("--support", action="append", default=[], help="built-in support task for GS and BKT (repeatable)")
    p.add_argument(
        "--cka-task", action="append", default=[], help="built-in task whose images CKA compares (repeatable)"
    )
    p.add_argument(
        "--split", default="val", choices=["train", "val", "test"], help="split the metrics use (default: val)"
    )
    p.add_argument("--alphas", type=float, nargs="+", default=None, help="BKT grid in (0, 1] (default 0.1 .. 1.0)")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")


def run(args: argparse.Namespace) -> int:

    # NaN or inf is refused here, before any model or data is loaded.
    alphas = tuple(finite_coefficient(a, "--alphas value") for a in args.alphas) if args.alphas else BKT_GRID
    if args.run_dir and (args.zeroshot or args.finetuned):
        raise PaintError("give either RUN_DIR or --zeroshot with --finetuned, not both")
    if args.run_dir:
        out = run_metrics(args.run_dir, args.split, alphas)
    elif args.zeroshot and args.finetuned:
        if not args.support and not args.cka_task:
            raise PaintError("name at least one --support task (GS, BKT) or --cka-task (CKA)")
        out = pair_metrics(
            args.zeroshot,
            args.finetuned,
            [TaskSpec(name=n) for n in args.support],
            [TaskSpec(name=n) for n in args.cka_task],
            args.split,
            alphas,
        )
    else:
        raise PaintError("give a paint patch output directory, or --zeroshot and --finetuned checkpoints")
    if args.output:
        write_json_atomic(args.output, out)
    if args.json:
        print(json.dumps(out, indent=2, default=float))
        return 0
    print(f"||w_zs - w_ft||_2: {out['distance']:.4g}")
    if "gradient_similarity" in out:
        bkt = out["backward_knowledge_transfer"]
        print(
            f"GradientSimilarity ({', '.join(out['support_tasks'])}, {args.split}): {out['gradient_similarity']:+.4f}"
        )
        print(f"BackwardKnowledgeTransfer: {bkt['bkt']:+.4g} (at alpha {bkt['alpha']:.2g})")
    for task, v in out["cka"].items():
        print(f"linear CKA zero-shot vs fine-tuned, {task} ({args.split}): {v:.4f}")
    return 0
