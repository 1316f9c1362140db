"""Wall time of choosing alpha: the full 11-point grid against the race screened by the line's ends, live.

``bench_racing.py`` counts the images each selection reads, replayed on finished runs; this script
times both on one fine-tuned line, interleaved (grid, race, grid, race, ...), each repetition with
an empty results store so nothing is read back. Printed per repetition and as the best of them:
seconds, model evaluations (calls), images read, the chosen alpha; and the race's time as a share
of the grid's. The fine-tune is made once (its cost is not part of either selection).

    .venv/bin/python benchmarks/bench_race_wall.py --model paint:default --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from paint.data.spec import TaskSpec
from paint.evaluation.results import ResultsStore
from paint.pipeline.multitask import MultitaskConfig, start_run
from paint.pipeline.operation import choose
from paint.pipeline.pool import Line, TaskPool
from paint.runtime import apply_threads
from paint.selection import SelectionConfig
from paint.train.finetune import FinetuneConfig

SUPPORT = ["shapes", "colours", "rendered-digits", "backgrounds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="paint:default")
    ap.add_argument("--patch", default="digits")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    apply_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = MultitaskConfig(
            model=args.model,
            output_dir=str(out),
            patch_tasks=[TaskSpec(name=args.patch, val_fraction=0.2)],
            support_tasks=[TaskSpec(name=n) for n in SUPPORT],
            modes=["joint"],
            finetune=FinetuneConfig(epochs=args.epochs, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1),
            threads=args.threads,
            save_models=False,
        )
        ctx, _ = start_run(cfg, out, False, cfg.patch_tasks, cfg.support_tasks)
        theta_ft = ctx.finetune_from(ctx.theta_zs, [args.patch], "finetune")
        line = Line.between(ctx.theta_zs, theta_ft)
        base = ctx.pool
        sizes = sum(len(t.labels["val"]) for t in base.tasks)
        rows: dict[str, list[tuple[float, int, int, float]]] = {"grid": [], "screened race": []}
        for rep in range(args.repeats):
            for name, sel in (("grid", SelectionConfig(race=None)), ("screened race", SelectionConfig())):
                store = ResultsStore(Path(tmp) / f"{name.replace(' ', '-')}-{rep}.jsonl")
                pool = TaskPool(base.model, base.spec, base.tasks, store, base.batch_size, bundle=base.bundle)
                t0 = time.perf_counter()
                choice = choose(pool, line, sel, [args.patch], SUPPORT)
                seconds = time.perf_counter() - t0
                records = store.records()
                read = sum(int(r["n"]) for r in records)
                rows[name].append((seconds, len({(r["alpha"], r["split"]) for r in records}), read, choice.alpha))
                print(f"rep {rep} {name}: {seconds:.2f} s, {read} images read, alpha {choice.alpha:g}", flush=True)
    print(
        f"\n{args.model}, {args.patch} vs {len(SUPPORT)} support tasks, {sizes} validation images, {args.threads} thread(s)"
    )
    print("| selection | best s | evaluations | images read | share of the grid's images | alpha |")
    print("|---|---|---|---|---|---|")
    full = min(r[2] for r in rows["grid"])
    for name, rs in rows.items():
        best = min(rs)
        print(f"| {name} | {best[0]:.2f} | {best[1]} | {best[2]} | {best[2] / full:.0%} | {best[3]:g} |")
    print(f"screened race / grid, best of {args.repeats}: {min(rows['screened race'])[0] / min(rows['grid'])[0]:.2f}x")


if __name__ == "__main__":
    main()
