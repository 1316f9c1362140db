"""Per-block coefficients vs one alpha (issue 15), on the offline world.

One fine-tune per patching task (the demo's / the multi-task example's recipe, cached under
``--out``), then every strategy chooses on the *validation* splits of the same line(s) and is
reported on *test*:

- single task: digits patched with the four support tasks (``paint demo`` settings), rows
  grid (one alpha), boundary (one alpha, bisected to 1e-3: the fair single-alpha baseline at
  the same bound), lines (2 coefficients), blockwise (one per block), and the label-free
  entropy objective (grid and blockwise; digits labels hidden from the choice);
- ``--multitask``: digits + counting (``examples/multitask-digits-counting.yaml``), parallel mode:
  coordinate-wise single alphas (the existing search) vs blockwise (one vector per task,
  layer-wise AdaMerging) with cross-entropy and with entropy.

Every choice keeps the support tasks' mean validation accuracy within 1 point of zero-shot.
Columns: validation and test accuracy of the patching task(s), test support mean and its
drop, free coefficients, validation evaluations, gradient steps (a sample of ``batch`` images
per task, forward + backward), wall time of the choice.

With ``--seeds N`` (single task) every seed is a full repetition (digits' validation split and the
fine-tuning seed), kept in ``--out`` on a rerun; the last table gives each strategy's mean over
seeds with its 95% t interval and the paired difference against the bisected single alpha
(:func:`paint.stats.paired_difference`: same seeds, same test images), and how many seeds kept
the support bound on test. ``--model`` picks a rung of the ladder.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_blocks.py --threads 1
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_blocks.py --threads 1 --multitask
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_blocks.py --threads 1 --model paint:medium --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from finetune_cache import fine_tuned, finetune_config  # benchmarks/ (on sys.path when run as a script)

from paint.data.spec import TaskSpec
from paint.evaluation.results import MemoryStore
from paint.models.clip import DEFAULT_MODEL, load_clip
from paint.pipeline.operation import choose, choose_blocks
from paint.pipeline.pool import Line, TaskPool, load_tasks, prepare_tasks
from paint.selection import SelectionConfig
from paint.stats import decode_correct, paired_difference, seed_interval
from paint.studies.demo import DEMO_SUPPORT
from paint.weights.blocks import add_block_task_vectors, interpolate_blocks

BASE = dict(objective="constrained", epsilon=1.0, constraint="mean", race=None)  # every alpha reads every image
SINGLE = {
    "grid (one alpha)": SelectionConfig(strategy="grid", **BASE),
    "boundary (one alpha, bisection)": SelectionConfig(strategy="boundary", budget=12, **BASE),
    "lines": SelectionConfig(strategy="lines", **BASE),
    "blockwise": SelectionConfig(strategy="blockwise", **BASE),
    "entropy, grid (label-free)": SelectionConfig(strategy="grid", **{**BASE, "objective": "entropy"}),
    "entropy, blockwise (label-free)": SelectionConfig(strategy="blockwise", **{**BASE, "objective": "entropy"}),
}


def row(pool, label, theta, choice, patch, support, zs_test, wall, grad_steps=0, free=1, evals=0) -> dict:
    val = pool.evaluate_state(theta, "val")
    test = pool.evaluate_state(theta, "test")
    s_test = float(np.mean([test[s]["accuracy"] for s in support]))
    s_zs = float(np.mean([zs_test[s]["accuracy"] for s in support]))
    s_val = float(np.mean([val[s]["accuracy"] for s in support]))
    return {
        "strategy": label,
        "val": {p: val[p]["accuracy"] for p in patch},
        "test": {p: test[p]["accuracy"] for p in patch},
        "support_val": s_val,
        "support_test": s_test,
        "support_test_drop": s_test - s_zs,
        "worst_support_test_drop": min(test[s]["accuracy"] - zs_test[s]["accuracy"] for s in support),
        "free": free,
        "evals": evals,
        "grad_steps": grad_steps,
        "wall_s": round(wall, 1),
        "alphas": choice,
        "test_correct": {t: test[t]["correct"] for t in (*patch, *support)},
        "test_n": {t: test[t]["n"] for t in (*patch, *support)},
    }


def print_rows(title: str, rows: list[dict], patch: list[str], zs_val: dict, zs_test: dict, support) -> None:
    s0v = float(np.mean([zs_val[s]["accuracy"] for s in support]))
    s0t = float(np.mean([zs_test[s]["accuracy"] for s in support]))
    print(f"\n### {title}\n")
    cols = " | ".join(f"{p} val | {p} test" for p in patch)
    print(
        f"| strategy | {cols} | support val (drop) | support test (drop) | worst support test drop | "
        "free coeffs | val evals | grad steps | wall s |"
    )
    print("|---" * (8 + 2 * len(patch)) + "|")
    zs = " | ".join(f"{100 * zs_val[p]['accuracy']:.1f} | {100 * zs_test[p]['accuracy']:.1f}" for p in patch)
    print(f"| zero-shot | {zs} | {100 * s0v:.1f} | {100 * s0t:.1f} | - | 0 | 0 | 0 | - |")
    for r in rows:
        acc = " | ".join(f"{100 * r['val'][p]:.1f} | {100 * r['test'][p]:.1f}" for p in patch)
        print(
            f"| {r['strategy']} | {acc} | {100 * r['support_val']:.1f} ({100 * (r['support_val'] - s0v):+.2f}) | "
            f"{100 * r['support_test']:.1f} ({100 * r['support_test_drop']:+.2f}) | "
            f"{100 * r['worst_support_test_drop']:+.1f} | {r['free']} | {r['evals']} | {r['grad_steps']} | {r['wall_s']} |"
        )
    for r in rows:
        print(f"  {r['strategy']}: {r['alphas']}")


def single_task(pool, theta_zs, out, epochs, only=(), seed=0) -> list[dict]:
    ft_cfg = finetune_config(epochs, seed)
    theta_ft = fine_tuned(pool, theta_zs, "digits", ft_cfg, out)
    line = Line.between(theta_zs, theta_ft)
    patch, support = ["digits"], list(DEMO_SUPPORT)
    zs_val, zs_test = pool.evaluate_state(theta_zs, "val"), pool.evaluate_state(theta_zs, "test")
    rows = []
    for label, cfg in SINGLE.items():
        if only and not any(o in label for o in only):
            continue
        t0 = time.time()
        c = choose(pool, line, cfg, patch, support, per_block=True)
        wall = time.time() - t0
        if c.block_alphas is None:
            theta, alphas, free, steps = line.at(c.alpha), f"alpha {c.alpha:.3g}", 1, 0
        else:
            theta = interpolate_blocks(theta_zs, theta_ft, c.block_alphas[0])
            alphas = ", ".join(f"{b} {a:.3f}" for b, a in c.block_alphas[0].items())
            free, steps = c.search["free_coefficients"], c.search["gradient_steps"]
        rows.append(row(pool, label, theta, alphas, patch, support, zs_test, wall, steps, free, c.n_model_evals))
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("test_")}), flush=True)
    print_rows(
        f"digits + {len(support)} support tasks (fine-tune {epochs} epochs, seed {seed})",
        rows,
        patch,
        zs_val,
        zs_test,
        support,
    )
    zs_row = {
        "strategy": "zero-shot",
        "test": {p: zs_test[p]["accuracy"] for p in patch},
        "support_test": float(np.mean([zs_test[s]["accuracy"] for s in support])),
        "test_correct": {t: zs_test[t]["correct"] for t in (*patch, *support)},
        "test_n": {t: zs_test[t]["n"] for t in (*patch, *support)},
    }
    return [zs_row, *rows]


def _correct(seed_rows: list[list[dict]], label: str, tasks: list[str]) -> list[list[np.ndarray]]:
    out = []
    for rows in seed_rows:
        r = next(r for r in rows if r["strategy"] == label)
        out.append([decode_correct(r["test_correct"][t], r["test_n"][t]) for t in tasks])
    return out


def print_seeded(seed_rows: list[list[dict]], seeds: list[int], reference: str, model: str) -> None:
    """Each strategy over seeds: test patch and support drop (mean ± t half), paired vs ``reference``."""
    patch, support = ["digits"], list(DEMO_SUPPORT)
    labels = [r["strategy"] for r in seed_rows[0] if r["strategy"] != "zero-shot"]
    zs_support = [100 * next(r for r in rows if r["strategy"] == "zero-shot")["support_test"] for rows in seed_rows]

    def cell(values: list[float]) -> str:
        iv = seed_interval(values)
        return f"{iv.mean:.1f}" + ("" if np.isnan(iv.half) else f" ± {iv.half:.1f}")

    def diff(d) -> str:
        return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]" + (" *" if d.established else "")

    print(f"\n### {model}: {len(seeds)} seeds {seeds}, test accuracy (%), mean ± 95% t half-width over seeds\n")
    print(
        f"| strategy | digits test | support test drop | digits vs {reference} | support vs {reference} | "
        "bound held on test | free coeffs | val evals | wall s |"
    )
    print("|---" * 9 + "|")
    for label in labels:
        rows = [next(r for r in rr if r["strategy"] == label) for rr in seed_rows]
        held = sum(r["support_test_drop"] >= -0.01 - 1e-9 for r in rows)
        if label == reference:
            dp = ds = "-"
        else:
            dp = diff(paired_difference(_correct(seed_rows, label, patch), _correct(seed_rows, reference, patch)))
            ds = diff(paired_difference(_correct(seed_rows, label, support), _correct(seed_rows, reference, support)))
        print(
            f"| {label} | {cell([100 * r['test']['digits'] for r in rows])} | "
            f"{cell([100 * r['support_test_drop'] for r in rows])} | {dp} | {ds} | {held}/{len(rows)} | "
            f"{rows[0]['free']} | {np.mean([r['evals'] for r in rows]):.0f} | {np.mean([r['wall_s'] for r in rows]):.0f} |"
        )
    print(f"\nzero-shot support test mean: {np.mean(zs_support):.1f}; `*`: the paired 95% interval excludes 0")


def multitask(pool, theta_zs, out, epochs) -> list[dict]:
    from paint.pipeline.combine import parallel_merge

    ft_cfg = finetune_config(epochs, 0)
    patch, support = ["digits", "counting"], list(DEMO_SUPPORT)
    thetas = [fine_tuned(pool, theta_zs, n, ft_cfg, out) for n in patch]
    zs_val, zs_test = pool.evaluate_state(theta_zs, "val"), pool.evaluate_state(theta_zs, "test")
    reference = zs_val
    rows = []
    # Coordinate-wise single alphas (what `modes: [parallel]` does), on the same two fine-tunes.
    from paint.pipeline.combine import parallel_line

    t0 = time.time()
    alphas, evals = [0.0, 0.0], 0
    for i in range(2):
        base, end = parallel_line(theta_zs, thetas, alphas, i)
        c = choose(pool, Line.between(base, end, f"par/{i}/"), SelectionConfig(**BASE), patch, support, reference)
        alphas[i], evals = c.alpha, evals + c.n_model_evals
    theta = parallel_merge(theta_zs, thetas, alphas)
    rows.append(
        row(
            pool,
            "parallel, one alpha per task",
            theta,
            str(alphas),
            patch,
            support,
            zs_test,
            time.time() - t0,
            0,
            2,
            evals,
        )
    )
    print(json.dumps(rows[-1]), flush=True)
    for label, objective in (
        ("parallel, blockwise", "constrained"),
        ("parallel, blockwise entropy (label-free)", "entropy"),
    ):
        cfg = SelectionConfig(strategy="blockwise", **{**BASE, "objective": objective})
        t0 = time.time()
        c = choose_blocks(pool, thetas, theta_zs, cfg, patch, support, reference)
        theta = add_block_task_vectors(
            theta_zs,
            [{k: t[k] - theta_zs[k] for k in theta_zs if theta_zs[k].is_floating_point()} for t in thetas],
            c.block_alphas,
        )
        alphas = " / ".join(", ".join(f"{a:.2f}" for a in v.values()) for v in c.block_alphas)
        rows.append(
            row(
                pool,
                label,
                theta,
                alphas,
                patch,
                support,
                zs_test,
                time.time() - t0,
                c.search["gradient_steps"],
                c.search["free_coefficients"],
                c.n_model_evals,
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    print_rows(f"digits + counting, parallel (fine-tunes {epochs} epochs)", rows, patch, zs_val, zs_test, support)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench-blocks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: 20 (demo), 10 (multi-task example)")
    ap.add_argument("--multitask", action="store_true")
    ap.add_argument("--only", nargs="*", default=(), help="single task: run only the rows whose label contains one")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a rung of the ladder (paint:tiny, paint:medium) or a path")
    ap.add_argument("--seeds", type=int, default=None, help="single task: repeat over seeds 0..N-1 (kept on rerun)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_clip(args.model)
    theta_zs = bundle.image_tower_copy()
    t0 = time.time()
    if args.multitask:
        pool = make_pool(bundle, out, 0, True)
        rows = multitask(pool, theta_zs, out, args.epochs or 10)
        (out / "multitask.json").write_text(json.dumps(rows, indent=1))
    elif args.seeds is None:
        rows = single_task(make_pool(bundle, out, 0, False), theta_zs, out, args.epochs or 20, args.only)
        (out / "single.json").write_text(json.dumps(rows, indent=1))
    else:
        seeds, seed_rows = list(range(args.seeds)), []
        for seed in seeds:
            path = out / f"single-seed-{seed}.json"
            if path.is_file():
                seed_rows.append(json.loads(path.read_text()))
                print(f"seed {seed}: kept from {path}", flush=True)
                continue
            pool = make_pool(bundle, out, seed, False)
            seed_rows.append(single_task(pool, theta_zs, out, args.epochs or 20, args.only, seed))
            path.write_text(json.dumps(seed_rows[-1], indent=1))
        print_seeded(seed_rows, seeds, "boundary (one alpha, bisection)", args.model)
    print(f"\ntotal {time.time() - t0:.0f}s", flush=True)


def make_pool(bundle, out: Path, seed: int, with_counting: bool) -> TaskPool:
    """The tasks on a fresh in-memory store (wall times are not cache reads); ``seed`` draws digits' validation split."""
    specs = [TaskSpec(name="digits", val_fraction=0.2, split_seed=seed)]
    specs += [TaskSpec(name="counting")] if with_counting else []
    loaded = load_tasks(specs, "patch") + load_tasks([TaskSpec(name=n) for n in DEMO_SUPPORT], "support")
    tasks = prepare_tasks(bundle, loaded, out / "cache", 256)
    print(f"validation images per evaluation: {sum(len(t.labels['val']) for t in tasks)}", flush=True)
    return TaskPool(bundle.model, bundle.spec, tasks, MemoryStore(), 256)


if __name__ == "__main__":
    main()
