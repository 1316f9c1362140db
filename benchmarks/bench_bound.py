"""How often does the chosen alpha keep the support bound on *test*? The point rule vs a margin.

The selection holds the support tasks' mean within ``epsilon`` = 1 point of zero-shot on the
validation split; the reader cares about the test split. For every (patching task, seed): one
fine-tune (seed s: fine-tuning seed and validation split), one 11-point validation sweep, and
each rule chooses from the same sweep:

- ``point``: the paper's rule, the point estimate of the support change within epsilon;
- ``lower-<c>``: ``selection.bound_confidence: c``, the change's one-sided lower confidence bound
  (paired over the validation images) within epsilon: a margin as wide as the split is noisy.

Printed: per rule, the seeds whose choice holds the bound on test (with a Wilson interval on
that fraction), the mean test support change, the mean test accuracy of the patching task, and
the paired cost of the margin against the point rule (:func:`paint.stats.paired_difference`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bound.py --threads 1 --seeds 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from paint.data.spec import TaskSpec
from paint.evaluation.results import MemoryStore
from paint.models.clip import DEFAULT_MODEL, load_clip
from paint.pipeline.pool import Line, TaskPool, load_tasks, prepare_tasks
from paint.selection import SelectionConfig
from paint.selection.strategies import evaluator_for, run_search
from paint.stats import decode_correct, paired_difference, seed_interval, wilson_interval
from paint.studies.demo import DEMO_SUPPORT
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune

RULES = {"point": None, "lower-0.9": 0.9, "lower-0.95": 0.95}


def one_case(bundle, theta_zs, task: str, seed: int, epochs: int, out: Path) -> dict:
    """Fine-tune ``task`` with ``seed``, sweep validation once, choose with every rule, measure on test."""
    spec = TaskSpec(name=task, split_seed=seed, **({"val_fraction": 0.2} if task == "digits" else {}))
    loaded = load_tasks([spec], "patch") + load_tasks([TaskSpec(name=n) for n in DEMO_SUPPORT], "support")
    tasks = prepare_tasks(bundle, loaded, out / "cache", 256)
    pool = TaskPool(bundle.model, bundle.spec, tasks, MemoryStore(), 256)
    pool.load(theta_zs)
    t = pool.task(task)
    cfg = FinetuneConfig(epochs=epochs, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1, seed=seed)
    finetune(pool.model, [TrainingSet(task, t.images["train"], t.labels["train"], t.head)], pool.spec, cfg)
    theta_ft = {k: v.detach().clone() for k, v in pool.model.state_dict().items() if k in theta_zs}
    line = Line.between(theta_zs, theta_ft)
    support = list(DEMO_SUPPORT)
    zs_test = pool.evaluate_line(line, 0.0, "test")
    case = {"task": task, "seed": seed, "rules": {}}
    for rule, conf in RULES.items():
        sel = SelectionConfig(bound_confidence=conf)
        result = run_search(evaluator_for(sel, pool.measure(line), [task], support), sel)
        test = pool.evaluate_line(line, result.alpha, "test")
        drop = 100 * float(np.mean([test[s]["accuracy"] - zs_test[s]["accuracy"] for s in support]))
        case["rules"][rule] = {
            "alpha": result.alpha,
            "patch_test": 100 * test[task]["accuracy"],
            "support_drop": drop,
            "holds": drop >= -1.0 - 1e-9,
            "correct": {n: [m["correct"], m["n"]] for n, m in test.items()},
        }
    return case


def report(cases: list[dict]) -> None:
    print(f"\n### support bound (1 pt) on test, {len(cases)} (task, seed) cases\n")
    print(
        "| rule | held on test | 95% Wilson interval | alpha (mean) | support change (mean ± t) | patch test (mean) "
        "| patch vs point (paired) |"
    )
    print("|---|---|---|---|---|---|---|")
    for rule in RULES:
        rs = [c["rules"][rule] for c in cases]
        held = sum(r["holds"] for r in rs)
        w = wilson_interval(held / len(rs), len(rs))
        drop = seed_interval([r["support_drop"] for r in rs])
        diff = "-"
        if rule != "point":
            # every case is its own (task, seed) pair: compare per task, mean over its seeds
            parts = []
            for task in sorted({c["task"] for c in cases}):
                sub = [c for c in cases if c["task"] == task]
                a = [[decode_correct(*c["rules"][rule]["correct"][task])] for c in sub]
                b = [[decode_correct(*c["rules"]["point"]["correct"][task])] for c in sub]
                d = paired_difference(a, b)
                parts.append(f"{task} {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]" + (" *" if d.established else ""))
            diff = "; ".join(parts)
        print(
            f"| {rule} | {held}/{len(rs)} | {100 * w.low:.0f}-{100 * w.high:.0f}% | "
            f"{np.mean([r['alpha'] for r in rs]):.2f} | {drop.mean:+.2f} ± {drop.half:.2f} | "
            f"{np.mean([r['patch_test'] for r in rs]):.1f} | {diff} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench-bound")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--tasks", nargs="+", default=["digits", "counting"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_clip(args.model)
    theta_zs = bundle.image_tower_copy()
    t0 = time.time()
    cases = []
    for task in args.tasks:
        for seed in range(args.seeds):
            path = out / f"{task}-seed-{seed}.json"
            if not path.is_file():  # kept on a rerun
                case = one_case(bundle, theta_zs, task, seed, args.epochs, out)
                path.write_text(json.dumps(case))
                print(task, seed, {r: (v["alpha"], round(v["support_drop"], 2)) for r, v in case["rules"].items()})
            cases.append(json.loads(path.read_text()))
    print(f"model {args.model}, tasks {args.tasks}, seeds 0..{args.seeds - 1}, {args.epochs} epochs")
    report(cases)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
