"""An N-task merging benchmark on the offline world (issue 23): the analogue of the 8-task CLIP benchmark.

Tasks (``--tasks``; default :data:`DEFAULT_TASKS`, 8 tasks on which ``paint:default`` is weak
zero-shot and a fine-tune gains 20+ points): digits, counting and six of the world's benchmark
tasks (:data:`paint.world.tasks.BENCHMARK_TASKS`). One fine-tune per task and seed from
theta_zs (the frozen-head recipe, 10 epochs, lr 3e-4, batch 128, warmup 20; cached under
``--out`` by task, theta_zs, epochs and seed, and reused by every method), then every merge
method of paint's registry that combines task vectors merges the N fine-tunes in memory on the
image-tower state dicts:

- task_arithmetic (Ilharco et al.), ties (Yadav et al., density 0.2), dare_ties (Yu et al.,
  drop rate 0.5), iso_c and iso_cts (Marczak et al.), tsv_m (Gargiulo et al.): the merging
  coefficient (``scaling``, lambda) is chosen on the tasks' *validation* splits, the papers'
  protocol: the grid point with the highest mean validation accuracy over the N tasks
  (``--grid``, default 0.1..1.0, for task arithmetic and DARE-TIES, which sum the task vectors;
  ``--wide-grid``, default 0.2..3.0, for TIES' disjoint mean and the SVD merges, whose papers'
  values are 1 or above); a lambda at an end of its grid is starred in the table;
- model_stock (Jang et al.) and regmean (Jin et al., Gram matrices of 256 train images per
  task, gathered in memory with :func:`paint.pipeline.regmean.gather_grams`): no coefficient.

Every task is scored with its own zero-shot head on its test split. Rows: zero-shot, the
individual fine-tunes (each on its own task: the upper reference), and each method; columns:
test accuracy per task, the average, and the normalized accuracy (merged / individual
fine-tuned, per task, averaged). With ``--seeds N >= 2`` (the fine-tuning seed, and DARE's)
the summary gives the mean over seeds with a 95% t interval (:func:`paint.stats.seed_interval`).
Per-seed results are kept in ``--out`` (``seed-<s>.json``) and reused on a rerun; the summary
goes to ``merging.json``, ``merging.md`` and ``merging.png``.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_merging.py --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_merging.py --threads 1 --model paint:medium --seeds 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_merging.py --threads 1 --methods task_arithmetic ties
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from finetune_cache import fine_tuned, finetune_config  # benchmarks/ (on sys.path when run as a script)

from paint.data.spec import TaskSpec
from paint.evaluation.results import MemoryStore
from paint.models.clip import DEFAULT_MODEL, load_clip
from paint.pipeline.pool import TaskPool, load_tasks, prepare_tasks
from paint.stats import seed_interval
from paint.weights.methods import get_method

# digits and counting (weak zero-shot world tasks) and six of the world's benchmark tasks: 8 tasks, as CLIP's
# benchmark (``mirrored-digits`` is the ninth, with --tasks).
DEFAULT_TASKS: tuple[str, ...] = (
    "digits",
    "counting",
    "typographic-shapes",
    "typographic-colours",
    "upside-down-digits",
    "pair-colours",
    "tiny-shapes",
    "outline-shapes",
)
GRID: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(1, 11))  # 0.1 .. 1.0
# TIES (a disjoint mean of the task vectors) and the SVD merges (the summed task vectors with a
# flattened spectrum) put their coefficient at 1 or above: TIES' paper searches 0.8..1.8, TSV-M's and
# Iso-C's published value is 1.0. Their grid brackets 1 widely.
WIDE_GRID: tuple[float, ...] = tuple(round(0.2 * i, 2) for i in range(1, 16))  # 0.2 .. 3.0
WIDE_METHODS = ("ties", "iso_c", "iso_cts", "tsv_m")
# method -> registry parameters (besides the scaling); None: no coefficient to choose.
METHODS: dict[str, dict[str, Any]] = {
    "task_arithmetic": {},
    "ties": {"density": 0.2},
    "dare_ties": {"drop_rate": 0.5},
    "model_stock": {},
    "iso_c": {},
    "iso_cts": {},
    "tsv_m": {},
    "regmean": {},
}
NO_SCALING = ("model_stock", "regmean")


def merge_states(method: Any, params: Any, theta_zs: dict, thetas: Sequence[dict]) -> dict:
    """Merge whole in-memory image-tower states tensor by tensor (integer tensors copied from the base)."""
    weights = [1.0] * len(thetas)
    out = {}
    for k, base in theta_zs.items():
        if not base.is_floating_point():
            out[k] = base.clone()
            continue
        out[k] = method.fn(base, [t[k] for t in thetas], weights, params, k).contiguous()
    return out


def regmean_method(pool: TaskPool, theta_zs: dict, thetas: Sequence[dict], names: Sequence[str], params: Any) -> Any:
    """The regmean entry with each fine-tune's Gram matrices (gathered on its task's train images) bound."""
    from paint.pipeline.regmean import gather_grams, sample_indices
    from paint.weights.regmean import with_grams

    grams = []
    for theta, name in zip(thetas, names):
        t = pool.task(name)
        idx = sample_indices(len(t.labels["train"]), params.n_images, params.seed)
        pool.load(theta)
        images = torch.as_tensor(np.asarray(t.images["train"][idx]))
        grams.append(gather_grams(pool.model, images, pool.spec, params.batch_size).grams)
    pool.load(theta_zs)
    return with_grams(get_method("regmean"), grams)


def accuracies(metrics: dict, names: Sequence[str]) -> dict[str, float]:
    return {n: float(metrics[n]["accuracy"]) for n in names}


def run_method(
    pool: TaskPool,
    name: str,
    theta_zs: dict,
    thetas: Sequence[dict],
    names: Sequence[str],
    grid: Sequence[float],
    seed: int,
    wide_grid: Sequence[float] = WIDE_GRID,
) -> dict:
    """One method: lambda chosen on the mean validation accuracy over the tasks, then test accuracy per task."""
    t0 = time.time()
    method = get_method(name)
    extra = dict(METHODS[name])
    if name == "dare_ties":
        extra["seed"] = seed
    if name == "regmean":
        params = method.parse_params(extra)
        method = regmean_method(pool, theta_zs, thetas, names, params)
    if name in WIDE_METHODS:
        grid = wide_grid
    points = [None] if name in NO_SCALING else list(grid)
    sweep, best, best_val = [], None, -1.0
    for lam in points:
        params = method.parse_params(extra if lam is None else {**extra, "scaling": lam})
        theta = merge_states(method, params, theta_zs, thetas)
        val = accuracies(pool.evaluate_state(theta, "val", names), names)
        mean_val = float(np.mean(list(val.values())))
        sweep.append({"scaling": lam, "val": val, "val_mean": mean_val})
        if mean_val > best_val:  # ties keep the smaller lambda (the grid is increasing)
            best, best_val, best_theta = lam, mean_val, theta
    test = accuracies(pool.evaluate_state(best_theta, "test", names), names)
    return {
        "method": name,
        "scaling": best,
        "val_mean": best_val,
        "test": test,
        "sweep": sweep,
        "edge": best is not None and best in (grid[0], grid[-1]),
        "wall_s": round(time.time() - t0, 1),
    }


def summarise(row: dict, ft: dict[str, float]) -> dict:
    test = row["test"]
    row["avg"] = float(np.mean(list(test.values())))
    row["normalized"] = float(np.mean([test[n] / ft[n] for n in test]))
    return row


def run_seed(
    bundle: Any,
    pool: TaskPool,
    theta_zs: dict,
    names: Sequence[str],
    seed: int,
    out: Path,
    epochs: int,
    methods: Sequence[str],
    grid: Sequence[float],
    max_steps: int | None = None,
    wide_grid: Sequence[float] = WIDE_GRID,
) -> dict:
    """Zero-shot, individual fine-tuned and every method's row for one seed."""
    cfg = finetune_config(epochs, seed, max_steps)
    thetas = [fine_tuned(pool, theta_zs, n, cfg, out) for n in names]
    zs = accuracies(pool.evaluate_state(theta_zs, "test", names), names)
    ft = {n: float(pool.evaluate_state(theta, "test", [n])[n]["accuracy"]) for n, theta in zip(names, thetas)}
    ft_val = {n: float(pool.evaluate_state(theta, "val", [n])[n]["accuracy"]) for n, theta in zip(names, thetas)}
    rows = [
        summarise({"method": "zero-shot", "scaling": None, "test": zs}, ft),
        summarise({"method": "individual fine-tuned", "scaling": None, "test": ft, "val": ft_val}, ft),
    ]
    for m in methods:
        row = summarise(run_method(pool, m, theta_zs, thetas, names, grid, seed, wide_grid), ft)
        print(
            f"seed {seed} {m}: lambda {row['scaling']}, val mean {100 * row['val_mean']:.1f}, "
            f"test avg {100 * row['avg']:.1f}, normalized {100 * row['normalized']:.1f} ({row['wall_s']}s)",
            flush=True,
        )
        rows.append(row)
    return {
        "seed": seed,
        "tasks": list(names),
        "epochs": epochs,
        "max_steps": max_steps,
        "grid": list(grid),
        "wide_grid": list(wide_grid),
        "rows": rows,
    }


def _cell(values: Sequence[float]) -> str:
    iv = seed_interval([100 * v for v in values])
    return f"{iv.mean:.1f}" + ("" if np.isnan(iv.half) else f" ± {iv.half:.1f}")


def table(results: Sequence[dict], model: str) -> tuple[str, list[dict]]:
    """The markdown table (mean ± 95% t half-width over seeds when there are several) and its rows."""
    names = results[0]["tasks"]
    labels = [r["method"] for r in results[0]["rows"]]
    seeds = [r["seed"] for r in results]
    head = f"### {model}: {len(names)}-task merging, test accuracy (%), seeds {seeds}\n\n"
    lines = [
        "| method | " + " | ".join(names) + " | avg | normalized | lambda |",
        "|---" * (len(names) + 4) + "|",
    ]
    summary = []
    for label in labels:
        rows = [next(r for r in res["rows"] if r["method"] == label) for res in results]
        lams = [r["scaling"] for r in rows]
        lam = "-" if lams[0] is None else ", ".join(f"{x:g}" + "*" * bool(r.get("edge")) for x, r in zip(lams, rows))
        cells = [_cell([r["test"][n] for r in rows]) for n in names]
        avg, norm = _cell([r["avg"] for r in rows]), _cell([r["normalized"] for r in rows])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg} | {norm} | {lam} |")
        summary.append(
            {
                "method": label,
                "test": {n: [r["test"][n] for r in rows] for n in names},
                "avg": [r["avg"] for r in rows],
                "normalized": [r["normalized"] for r in rows],
                "scaling": lams,
            }
        )
    note = "\n`*`: lambda at an end of its grid (widen --grid or --wide-grid). normalized: merged / individual fine-tuned, per task, averaged.\n"
    return head + "\n".join(lines) + "\n" + note, summary


def plot(results: Sequence[dict], path: Path) -> Path:
    from paint.plotting import new_figure, save_figure

    labels = [r["method"] for r in results[0]["rows"]]
    avg = [np.mean([next(x for x in res["rows"] if x["method"] == lab)["avg"] for res in results]) for lab in labels]
    norm = [
        np.mean([next(x for x in res["rows"] if x["method"] == lab)["normalized"] for res in results]) for lab in labels
    ]
    fig, axes = new_figure(1, 2, figsize=(11, 4))
    for ax, values, title in ((axes[0], avg, "average test accuracy (%)"), (axes[1], norm, "normalized accuracy (%)")):
        ax.barh(range(len(labels)), [100 * v for v in values], color="tab:blue")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(values):
            ax.text(100 * v, i, f" {100 * v:.1f}", va="center", fontsize=7)
    fig.suptitle(f"{len(results[0]['tasks'])}-task merging, {len(results)} seed(s)", fontsize=10)
    return save_figure(fig, path)


def make_pool(bundle: Any, names: Sequence[str], out: Path) -> TaskPool:
    """Every task as a patch task (train, val and test), on an in-memory results store."""
    loaded = load_tasks([TaskSpec(name=n) for n in names], "patch")
    tasks = prepare_tasks(bundle, loaded, out / "cache", 256)
    return TaskPool(bundle.model, bundle.spec, tasks, MemoryStore(), 256, bundle=bundle)


def bench(
    model: str = DEFAULT_MODEL,
    tasks: Sequence[str] = DEFAULT_TASKS,
    seeds: int = 1,
    out: str | Path = "runs/bench-merging",
    epochs: int = 10,
    methods: Sequence[str] = tuple(METHODS),
    grid: Sequence[float] = GRID,
    max_steps: int | None = None,
    wide_grid: Sequence[float] = WIDE_GRID,
) -> dict:
    """Run (or resume) the benchmark; returns ``{"results": per-seed results, "table": markdown, "summary": rows}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    bundle = load_clip(model)
    theta_zs = bundle.image_tower_copy()
    pool = None
    results = []
    for seed in range(seeds):
        path = out / f"seed-{seed}.json"
        if path.is_file():
            res = json.loads(path.read_text())
            same = [res["tasks"], res["epochs"], res.get("max_steps"), res["grid"], res.get("wide_grid")] == [
                list(tasks),
                epochs,
                max_steps,
                list(grid),
                list(wide_grid),
            ]
            if same and [r["method"] for r in res["rows"][2:]] == list(methods):
                print(f"seed {seed}: kept from {path}", flush=True)
                results.append(res)
                continue
        pool = pool or make_pool(bundle, tasks, out)
        res = run_seed(bundle, pool, theta_zs, tasks, seed, out, epochs, methods, grid, max_steps, wide_grid)
        res["model"] = model
        path.write_text(json.dumps(res, indent=1))
        results.append(res)
    md, summary = table(results, model)
    print("\n" + md, flush=True)
    (out / "merging.md").write_text(md)
    (out / "merging.json").write_text(json.dumps({"model": model, "summary": summary, "seeds": results}, indent=1))
    plot(results, out / "merging.png")
    return {"results": results, "table": md, "summary": summary}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="paint:default, paint:tiny, paint:medium or a path")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds 0..N-1 (per-seed results kept on rerun)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on fine-tuning steps (smoke runs)")
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID), help="lambdas tried (TA, TIES, DARE-TIES)")
    ap.add_argument(
        "--wide-grid", type=float, nargs="+", default=list(WIDE_GRID), help="lambdas of ties, iso_c, iso_cts, tsv_m"
    )
    ap.add_argument("--out", default="runs/bench-merging")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = bench(
        args.model,
        args.tasks,
        args.seeds,
        args.out,
        args.epochs,
        args.methods,
        args.grid,
        args.max_steps,
        args.wide_grid,
    )
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return result


if __name__ == "__main__":
    main()
