"""An N-task merging benchmark on the offline world (issue 23): the analogue of the 8-task CLIP benchmark.

Tasks (``--tasks``; default :data:`DEFAULT_TASKS`, 8 tasks on which ``paint:default`` is weak
zero-shot and a fine-tune gains 20+ points): digits, counting and six of the world's benchmark
tasks (:data:`paint.world.tasks.BENCHMARK_TASKS`). One fine-tune per task and seed from
theta_zs (the frozen-head recipe, 10 epochs, lr 3e-4, batch 128, warmup 20; cached under
``--out`` by task, theta_zs, epochs and seed, and reused by every method), then every row
combines the N fine-tunes with :func:`paint.pipeline.combine.combine_parallel`, the combine step
of ``paint multitask``'s parallel mode (one definition of how coefficients are chosen), with the
selection ``grid`` / ``mean_accuracy`` on the tasks' *validation* splits (no support task): the
papers' protocol, the coefficient of highest mean validation accuracy over the N tasks.

- task_arithmetic (Ilharco et al.), ties (Yadav et al., density 0.2), dare_ties (Yu et al.,
  drop rate 0.5, seeded by the fine-tuning seed), iso_c and iso_cts (Marczak et al.), tsv_m
  (Gargiulo et al.): lambda on ``--grid`` (default 0.1..1.0: task arithmetic and DARE-TIES, which
  sum the task vectors) or ``--wide-grid`` (default 0.2..3.0: TIES' disjoint mean and the SVD
  merges, whose papers' values are 1 or above), 0 (zero-shot) always a candidate; a lambda at an
  end of its grid is starred in the table;
- model_stock (Jang et al.) and regmean (Jin et al., Gram matrices of 256 train images per
  task, :func:`paint.pipeline.combine.pool_grams`): no coefficient;
- per_task: one alpha per task, searched coordinate by coordinate (PAINT's parallel patching);
- blockwise: one coefficient per task and block of the image tower (layer-wise AdaMerging's
  parametrisation, 2310.02575), projected Adam on validation cross-entropy from the best single
  alpha (``--blockwise-steps``, default 40), the best measured point by mean validation accuracy;
- blockwise_entropy: the same with AdaMerging's label-free objective, the mean prediction
  entropy of the validation images (their labels hidden from the choice).

Every task is scored with its own zero-shot head on its test split. Rows: zero-shot, the
individual fine-tunes (each on its own task: the upper reference), and each method; columns:
test accuracy per task, the average, and the normalized accuracy (merged / individual
fine-tuned, per task, averaged). With ``--seeds N >= 2`` (the fine-tuning seed, and DARE's)
the summary gives the mean over seeds with a 95% t interval (:func:`paint.stats.seed_interval`),
then the paired differences of the average test accuracy (:func:`paint.stats.paired_difference`:
same seeds, same test images) of every method against task arithmetic and of TSV-M against the
next best method, with whether each is established. Per-seed results are kept in ``--out``
(``seed-<s>.json``, written after every row) and reused on a rerun (rows of methods already
measured are kept; ``--only-seeds`` runs some seeds, e.g. one per process); the summary goes to
``merging.json``, ``merging.md`` and ``merging.png``.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_merging.py --threads 1 --seeds 3 --out runs/bench-merging-8
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
from paint.pipeline.combine import (
    PER_TASK,
    SUM_SCALINGS,
    WIDE_METHODS,
    WIDE_SCALINGS,
    Chooser,
    CombineConfig,
    combine_parallel,
)
from paint.pipeline.pool import TaskPool, load_tasks, prepare_tasks
from paint.pipeline.seeds import correct_of, fmt_difference, test_record
from paint.selection import SelectionConfig
from paint.stats import paired_difference, seed_interval

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
GRID: tuple[float, ...] = SUM_SCALINGS  # 0.1 .. 1.0: task arithmetic, DARE-TIES
WIDE_GRID: tuple[float, ...] = WIDE_SCALINGS  # 0.2 .. 3.0: TIES and the SVD merges (their papers' lambda is >= 1)
# The papers' protocol: the coefficient of highest mean validation accuracy over the merged tasks.
SELECTION = SelectionConfig(strategy="grid", objective="mean_accuracy", race=None)  # every lambda reads every image
# row label -> the combine step (paint.pipeline.combine) and, for the per-task rows, its selection.
METHODS: dict[str, dict[str, Any]] = {
    "task_arithmetic": {"method": "task_arithmetic"},
    "ties": {"method": "ties", "parameters": {"density": 0.2}},
    "dare_ties": {"method": "dare_ties", "parameters": {"drop_rate": 0.5}},
    "model_stock": {"method": "model_stock"},
    "iso_c": {"method": "iso_c"},
    "iso_cts": {"method": "iso_cts"},
    "tsv_m": {"method": "tsv_m"},
    "regmean": {"method": "regmean"},
    # one coefficient per task, searched coordinate by coordinate (PAINT's parallel patching, task-wise)
    "per_task": {"method": PER_TASK},
    # one coefficient per task and block (layer-wise AdaMerging's parametrisation), Adam on validation
    # cross-entropy, the best measured point by mean validation accuracy
    "blockwise": {"method": PER_TASK, "selection": {"strategy": "blockwise"}},
    # the same with AdaMerging's label-free objective: prediction entropy on the validation images
    "blockwise_entropy": {"method": PER_TASK, "selection": {"strategy": "blockwise", "objective": "entropy"}},
}
VERSION = 2  # per-seed files of an older layout (no per-image test results) are measured again


def combine_config(name: str, seed: int, grid: Sequence[float], wide_grid: Sequence[float]) -> CombineConfig:
    """The combine step of a row: its method, parameters (DARE's seed = the fine-tuning seed) and lambda grid."""
    spec = METHODS[name]
    params = dict(spec.get("parameters", {}))
    if spec["method"].startswith("dare"):
        params["seed"] = seed
    scalings = None
    if spec["method"] != PER_TASK and CombineConfig(method=spec["method"]).grid() is not None:
        scalings = list(wide_grid if spec["method"] in WIDE_METHODS else grid)
    return CombineConfig(method=spec["method"], parameters=params, scalings=scalings)


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
    blockwise_steps: int | None = None,
) -> dict:
    """One row: :func:`paint.pipeline.combine.combine_parallel` (coefficients on validation), then test per task."""
    t0 = time.time()
    cfg = combine_config(name, seed, grid, wide_grid)
    update = dict(METHODS[name].get("selection", {}))
    if blockwise_steps is not None and update.get("strategy") == "blockwise":
        update["blockwise"] = {"steps": blockwise_steps}
    selection = SelectionConfig(**{**SELECTION.model_dump(), **update}) if update else SELECTION
    combined = combine_parallel(Chooser(pool, selection, list(names)), cfg, theta_zs, thetas, names)
    scaling = combined.record.get("scaling")
    point = [p for c in combined.choices[-1:] if c.block_alphas is None for p in c.sweep if p["alpha"] == c.alpha]
    if point:  # the chosen point's validation accuracies, as the choice measured them
        val = {n: float(point[0]["val"][n]) for n in names}
    else:
        val = accuracies(pool.evaluate_state(combined.theta, "val", names), names)
    grid_used = combined.record.get("scalings") or []
    search = combined.choices[0].search if combined.choices and combined.choices[0].block_alphas else None
    return {
        "method": name,
        "scaling": scaling,
        "alphas": combined.alphas,
        "block_alphas": combined.choices[0].block_alphas if search else None,
        "val_mean": float(np.mean(list(val.values()))),
        **test_record(pool.evaluate_state(combined.theta, "test", names)),
        "edge": scaling is not None and (scaling <= grid_used[0] or scaling >= grid_used[-1]),
        "model_evals": sum(c.n_model_evals for c in combined.choices),
        "gradient_steps": search["gradient_steps"] if search else 0,
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
    blockwise_steps: int | None = None,
    kept: dict[str, dict] | None = None,
    on_row: Any = None,
) -> dict:
    """Zero-shot, individual fine-tuned and every method's row for one seed (``kept``: rows already measured;
    ``on_row(result so far)`` after each new row, so that a killed run keeps what it measured)."""
    kept = kept or {}
    cfg = finetune_config(epochs, seed, max_steps)
    thetas = [fine_tuned(pool, theta_zs, n, cfg, out) for n in names]
    zs = test_record(pool.evaluate_state(theta_zs, "test", names))
    own = {n: pool.evaluate_state(theta, "test", [n])[n] for n, theta in zip(names, thetas)}  # each on its own task
    ft = {n: float(m["accuracy"]) for n, m in own.items()}
    ft_val = {n: float(pool.evaluate_state(theta, "val", [n])[n]["accuracy"]) for n, theta in zip(names, thetas)}
    rows = [
        summarise({"method": "zero-shot", "scaling": None, **zs}, ft),
        summarise({"method": "individual fine-tuned", "scaling": None, **test_record(own), "val": ft_val}, ft),
    ]
    for m in methods:
        if m in kept:
            rows.append(kept[m])
            continue
        row = summarise(run_method(pool, m, theta_zs, thetas, names, grid, seed, wide_grid, blockwise_steps), ft)
        print(
            f"seed {seed} {m}: lambda {row['scaling']}, val mean {100 * row['val_mean']:.1f}, "
            f"test avg {100 * row['avg']:.1f}, normalized {100 * row['normalized']:.1f} ({row['wall_s']}s)",
            flush=True,
        )
        rows.append(row)
        if on_row is not None:
            on_row(seed_result(seed, names, epochs, max_steps, grid, wide_grid, blockwise_steps, rows))
    return seed_result(seed, names, epochs, max_steps, grid, wide_grid, blockwise_steps, rows)


def seed_result(seed, names, epochs, max_steps, grid, wide_grid, blockwise_steps, rows) -> dict:
    """One seed's record (``seed-<s>.json``)."""
    return {
        "version": VERSION,
        "seed": seed,
        "tasks": list(names),
        "epochs": epochs,
        "max_steps": max_steps,
        "grid": list(grid),
        "wide_grid": list(wide_grid),
        "blockwise_steps": blockwise_steps,
        "rows": rows,
    }


def _cell(values: Sequence[float]) -> str:
    iv = seed_interval([100 * v for v in values])
    return f"{iv.mean:.1f}" + ("" if np.isnan(iv.half) else f" ± {iv.half:.1f}")


def _coefficients(rows: Sequence[dict]) -> str:
    """Each seed's lambda (``*`` at an end of its grid), or the per-task alphas' mean, or ``-``."""
    if rows[0]["scaling"] is not None:
        return ", ".join(f"{r['scaling']:g}" + "*" * bool(r.get("edge")) for r in rows)
    if rows[0].get("alphas"):
        return "mean " + ", ".join(f"{np.mean(r['alphas']):.2f}" for r in rows)
    return "-"


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
        cells = [_cell([r["test"][n] for r in rows]) for n in names]
        avg, norm = _cell([r["avg"] for r in rows]), _cell([r["normalized"] for r in rows])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg} | {norm} | {_coefficients(rows)} |")
        summary.append(
            {
                "method": label,
                "test": {n: [r["test"][n] for r in rows] for n in names},
                "avg": [r["avg"] for r in rows],
                "normalized": [r["normalized"] for r in rows],
                "scaling": [r["scaling"] for r in rows],
                "alphas": [r.get("alphas") for r in rows],
            }
        )
    note = (
        "\n`*`: lambda at an end of its grid (widen --grid or --wide-grid). normalized: merged / individual "
        "fine-tuned, per task, averaged. per_task / blockwise rows: the mean of the per-task (per-block) alphas.\n"
    )
    return head + "\n".join(lines) + "\n" + note, summary


REFERENCE_ROWS = ("zero-shot", "individual fine-tuned")


def pairs_of_interest(results: Sequence[dict], reference: str = "task_arithmetic") -> list[tuple[str, str]]:
    """(A, B) pairs: every method against task arithmetic, TSV-M against the next best method by average, and
    within the SVD merges (Iso-CTS - Iso-C, TSV-M - Iso-CTS: the published "Iso-C ~ TSV-M ~ Iso-CTS")."""
    labels = [r["method"] for r in results[0]["rows"] if r["method"] not in REFERENCE_ROWS]
    pairs = [(m, reference) for m in labels if m != reference] if reference in labels else []
    if "tsv_m" in labels:
        avg = {m: np.mean([next(r for r in res["rows"] if r["method"] == m)["avg"] for res in results]) for m in labels}
        rest = sorted((m for m in labels if m != "tsv_m"), key=lambda m: -avg[m])
        if rest and (rest[0], "tsv_m") not in pairs and ("tsv_m", rest[0]) not in pairs:
            pairs.append(("tsv_m", rest[0]))
    for a, b in (("iso_cts", "iso_c"), ("tsv_m", "iso_cts")):
        if a in labels and b in labels and (a, b) not in pairs:
            pairs.append((a, b))
    return pairs


def differences(results: Sequence[dict], pairs: Sequence[tuple[str, str]]) -> tuple[str, list[dict]]:
    """Paired differences of the average test accuracy (:func:`paint.stats.paired_difference`: same seeds, same test
    images; the seeds' t interval and a paired bootstrap over images in quadrature), as a table and records."""
    names = results[0]["tasks"]

    def rows(label: str) -> list[dict]:
        return [next(r for r in res["rows"] if r["method"] == label) for res in results]

    lines = ["| A - B | average accuracy difference (points) [95% interval] | established |", "|---|---|---|"]
    records = []
    for a, b in pairs:
        d = paired_difference(correct_of(rows(a), names), correct_of(rows(b), names))
        lines.append(f"| {a} - {b} | {fmt_difference(d.record())} | {'yes' if d.established else 'no'} |")
        records.append({"a": a, "b": b, **d.record()})
    head = f"Paired differences over seeds {[r['seed'] for r in results]} (`*`: the interval excludes 0):\n\n"
    return head + "\n".join(lines) + "\n", records


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


def _settings(tasks, epochs, max_steps, grid, wide_grid, blockwise_steps) -> list:
    return [VERSION, list(tasks), epochs, max_steps, list(grid), list(wide_grid), blockwise_steps]


def bench(
    model: str = DEFAULT_MODEL,
    tasks: Sequence[str] = DEFAULT_TASKS,
    seeds: int | Sequence[int] = 1,
    out: str | Path = "runs/bench-merging",
    epochs: int = 10,
    methods: Sequence[str] = tuple(METHODS),
    grid: Sequence[float] = GRID,
    max_steps: int | None = None,
    wide_grid: Sequence[float] = WIDE_GRID,
    blockwise_steps: int | None = None,
) -> dict:
    """Run (or resume) the benchmark on seeds ``0..seeds-1`` (or the listed seeds).

    A seed's file is reused when its settings match: its rows of the asked methods are kept, the
    missing ones measured. Returns ``{"results", "table", "summary", "differences"}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    bundle = load_clip(model)
    theta_zs = bundle.image_tower_copy()
    pool = None
    results = []
    settings = _settings(tasks, epochs, max_steps, grid, wide_grid, blockwise_steps)
    for seed in range(seeds) if isinstance(seeds, int) else seeds:
        path = out / f"seed-{seed}.json"
        kept: dict[str, dict] = {}
        if path.is_file():
            res = json.loads(path.read_text())
            old = [res.get("version"), res["tasks"], res["epochs"], res.get("max_steps"), res["grid"]]
            if old + [res.get("wide_grid"), res.get("blockwise_steps")] == settings:
                kept = {r["method"]: r for r in res["rows"][2:] if r["method"] in methods}
                if set(kept) == set(methods):
                    print(f"seed {seed}: kept from {path}", flush=True)
                    results.append({**res, "rows": res["rows"][:2] + [kept[m] for m in methods]})
                    continue
        pool = pool or make_pool(bundle, tasks, out)

        def save(res: dict, path: Path = path) -> None:
            res["model"] = model
            path.write_text(json.dumps(res, indent=1))

        res = run_seed(
            bundle,
            pool,
            theta_zs,
            tasks,
            seed,
            out,
            epochs,
            methods,
            grid,
            max_steps,
            wide_grid,
            blockwise_steps,
            kept,
            save,
        )
        save(res)
        results.append(res)
    md, summary = table(results, model)
    diff_md, diffs = differences(results, pairs_of_interest(results))
    md = md + "\n" + diff_md
    print("\n" + md, flush=True)
    (out / "merging.md").write_text(md)
    record = {"model": model, "summary": summary, "differences": diffs, "seeds": results}
    (out / "merging.json").write_text(json.dumps(record, indent=1))
    plot(results, out / "merging.png")
    return {"results": results, "table": md, "summary": summary, "differences": diffs}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="paint:default, paint:tiny, paint:medium or a path")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds 0..N-1 (per-seed results kept on rerun)")
    ap.add_argument(
        "--only-seeds", type=int, nargs="+", default=None, help="run these seeds only (e.g. one per process)"
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on fine-tuning steps (smoke runs)")
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID), help="lambdas tried (TA, DARE-TIES)")
    ap.add_argument(
        "--wide-grid", type=float, nargs="+", default=list(WIDE_GRID), help="lambdas of ties, iso_c, iso_cts, tsv_m"
    )
    ap.add_argument("--blockwise-steps", type=int, default=None, help="Adam steps of the blockwise rows (default 40)")
    ap.add_argument("--out", default="runs/bench-merging")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = bench(
        args.model,
        args.tasks,
        args.only_seeds if args.only_seeds else args.seeds,
        args.out,
        args.epochs,
        args.methods,
        args.grid,
        args.max_steps,
        args.wide_grid,
        args.blockwise_steps,
    )
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return result


if __name__ == "__main__":
    main()
