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

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_blocks.py --threads 1
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_blocks.py --threads 1 --multitask
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
from paint.pipeline.operation import choose, choose_blocks
from paint.pipeline.pool import Line, TaskPool, load_tasks, prepare_tasks
from paint.selection import SelectionConfig
from paint.studies.demo import DEMO_SUPPORT
from paint.train.finetune import FinetuneConfig, TrainingSet, finetune
from paint.utils import hash_tensors
from paint.weights.blocks import add_block_task_vectors, interpolate_blocks

BASE = dict(objective="constrained", epsilon=1.0, constraint="mean")
SINGLE = {
    "grid (one alpha)": SelectionConfig(strategy="grid", **BASE),
    "boundary (one alpha, bisection)": SelectionConfig(strategy="boundary", budget=12, **BASE),
    "lines": SelectionConfig(strategy="lines", **BASE),
    "blockwise": SelectionConfig(strategy="blockwise", **BASE),
    "entropy, grid (label-free)": SelectionConfig(strategy="grid", **{**BASE, "objective": "entropy"}),
    "entropy, blockwise (label-free)": SelectionConfig(strategy="blockwise", **{**BASE, "objective": "entropy"}),
}


def fine_tuned(pool: TaskPool, theta_zs: dict, name: str, cfg: FinetuneConfig, out: Path) -> dict:
    """theta_ft of one patching task from theta_zs, cached by (theta_zs, task, recipe)."""
    from safetensors.torch import load_file, save_file

    path = out / f"theta_ft-{name}-{hash_tensors(theta_zs)[:10]}-e{cfg.epochs}.safetensors"
    if path.is_file():
        return load_file(str(path))
    pool.load(theta_zs)
    t = pool.task(name)
    t0 = time.time()
    finetune(pool.model, [TrainingSet(name, t.images["train"], t.labels["train"], t.head)], pool.spec, cfg)
    print(f"fine-tuned {name}: {cfg.epochs} epochs in {time.time() - t0:.0f}s", flush=True)
    theta = {k: v.detach().clone().contiguous() for k, v in pool.model.state_dict().items() if k in theta_zs}
    save_file(theta, str(path))
    return theta


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


def single_task(pool, theta_zs, out, epochs, only=()) -> list[dict]:
    ft_cfg = FinetuneConfig(epochs=epochs, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1, seed=0)
    theta_ft = fine_tuned(pool, theta_zs, "digits", ft_cfg, out)
    line = Line.between(theta_zs, theta_ft)
    patch, support = ["digits"], list(DEMO_SUPPORT)
    zs_val, zs_test = pool.evaluate_state(theta_zs, "val"), pool.evaluate_state(theta_zs, "test")
    rows = []
    for label, cfg in SINGLE.items():
        if only and not any(o in label for o in only):
            continue
        t0 = time.time()
        c = choose(pool, line, cfg, patch, support)
        wall = time.time() - t0
        if c.block_alphas is None:
            theta, alphas, free, steps = line.at(c.alpha), f"alpha {c.alpha:.3g}", 1, 0
        else:
            theta = interpolate_blocks(theta_zs, theta_ft, c.block_alphas[0])
            alphas = ", ".join(f"{b} {a:.3f}" for b, a in c.block_alphas[0].items())
            free, steps = c.search["free_coefficients"], c.search["gradient_steps"]
        rows.append(row(pool, label, theta, alphas, patch, support, zs_test, wall, steps, free, c.n_model_evals))
        print(json.dumps(rows[-1]), flush=True)
    print_rows(
        f"digits + {len(support)} support tasks (fine-tune {epochs} epochs)", rows, patch, zs_val, zs_test, support
    )
    return rows


def multitask(pool, theta_zs, out, epochs) -> list[dict]:
    from paint.pipeline.multitask import parallel_merge

    ft_cfg = FinetuneConfig(epochs=epochs, lr=3e-4, batch_size=128, warmup_steps=20, weight_decay=0.1, seed=0)
    patch, support = ["digits", "counting"], list(DEMO_SUPPORT)
    thetas = [fine_tuned(pool, theta_zs, n, ft_cfg, out) for n in patch]
    zs_val, zs_test = pool.evaluate_state(theta_zs, "val"), pool.evaluate_state(theta_zs, "test")
    reference = zs_val
    rows = []
    # Coordinate-wise single alphas (what `modes: [parallel]` does), on the same two fine-tunes.
    from paint.pipeline.multitask import parallel_line

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_clip(DEFAULT_MODEL)
    specs = [TaskSpec(name="digits", val_fraction=0.2)] + ([TaskSpec(name="counting")] if args.multitask else [])
    loaded = load_tasks(specs, "patch") + load_tasks([TaskSpec(name=n) for n in DEMO_SUPPORT], "support")
    tasks = prepare_tasks(bundle, loaded, out / "cache", 256)
    pool = TaskPool(bundle.model, bundle.spec, tasks, MemoryStore(), 256)  # fresh: wall times are not cache reads
    theta_zs = bundle.image_tower_copy()
    n_val = sum(len(t.labels["val"]) for t in tasks)
    print(f"validation images per evaluation: {n_val}", flush=True)
    t0 = time.time()
    if args.multitask:
        rows = multitask(pool, theta_zs, out, args.epochs or 10)
    else:
        rows = single_task(pool, theta_zs, out, args.epochs or 20, args.only)
    name = "multitask" if args.multitask else "single"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    print(f"\ntotal {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
