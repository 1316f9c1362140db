"""The N-task merging benchmark (benchmarks/bench_merging.py), small: paint:tiny, two tasks, a few steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from paint.data.registry import load_task
from paint.data.spec import TaskSpec
from paint.world.tasks import BENCHMARK_TASKS, TEMPLATES, WORLD_TASKS, task_texts, world_task

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    import sys

    if str(ROOT / "benchmarks") not in sys.path:  # as when the script runs: its folder is on the path
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_merging", ROOT / "benchmarks" / "bench_merging.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tasks_load_and_stay_out_of_the_tokenizer_corpus():
    vocab = set(json.loads((ROOT / "src/paint/assets/default-model/tokenizer.json").read_text())["model"]["vocab"])
    assert not set(BENCHMARK_TASKS) & set(WORLD_TASKS)
    texts = task_texts()
    for name in BENCHMARK_TASKS:
        task, _ = load_task(TaskSpec(name=name))
        assert len(set(task.classnames)) == len(task.classnames) >= 2
        for c in task.classnames:
            for t in TEMPLATES[name]:
                words = t.format(c).replace('"', " ").replace(".", " ").replace(":", " ").split()
                assert set(words) <= vocab, (name, t.format(c))
        test = world_task(name, sizes={"test": 20}).split("test")
        a = np.asarray(test.image(5))
        assert a.shape == (32, 32, 3) and np.array_equal(a, np.asarray(test.image(5)))
    assert task_texts() == texts


def test_bench_merging_small(tmp_path):
    bench = _bench()
    names = ["digits", "tiny-shapes"]
    methods = ["task_arithmetic", "ties", "model_stock", "tsv_m", "regmean", "blockwise_entropy"]
    argv = [
        "--model",
        "paint:tiny",
        "--tasks",
        *names,
        "--methods",
        *methods,
        "--grid",
        "0.5",
        "1.0",
        "--wide-grid",
        "0.5",
        "1.0",
    ]
    argv += ["--epochs", "1", "--max-steps", "3", "--out", str(tmp_path), "--blockwise-steps", "2"]
    out = bench.main(argv)
    rows = out["results"][0]["rows"]
    assert [r["method"] for r in rows] == ["zero-shot", "individual fine-tuned", *methods]
    for r in rows:
        assert set(r["test"]) == set(names)
        assert r["avg"] == pytest.approx(np.mean([r["test"][n] for n in names]))
    ft = rows[1]["test"]
    assert rows[1]["normalized"] == pytest.approx(1.0)
    for r in rows[2:]:
        assert r["normalized"] == pytest.approx(np.mean([r["test"][n] / ft[n] for n in names]))
        assert (r["scaling"] is None) == (r["method"] in ("model_stock", "regmean", "blockwise_entropy"))
        assert r["scaling"] is None or r["scaling"] in (0.0, 0.5, 1.0)  # 0: the merge lost to zero-shot on val
        assert set(r["test_correct"]) == set(names) == set(r["test_n"])
    entropy = rows[-1]
    assert entropy["block_alphas"] is not None and len(entropy["block_alphas"]) == 2 and entropy["gradient_steps"] == 2
    table = out["table"].splitlines()
    assert table[2].startswith("| method | digits | tiny-shapes | avg | normalized | lambda |")
    n_pairs = len(methods) - 1 + 1  # every method vs task arithmetic, and tsv_m vs the next best
    assert len([line for line in table if line.startswith("| ")]) == 1 + len(rows) + 1 + n_pairs
    # The paired differences: A - B of the average test accuracy, the point estimate is the difference of averages.
    diffs = {(d["a"], d["b"]): d for d in out["differences"]}
    assert len(diffs) == n_pairs and ("ties", "task_arithmetic") in diffs
    by = {r["method"]: r for r in rows}
    for (a, b), d in diffs.items():
        assert d["mean"] == pytest.approx(100 * (by[a]["avg"] - by[b]["avg"]), abs=1e-3)
        assert d["low"] <= d["mean"] <= d["high"] and d["established"] == (d["low"] > 0 or d["high"] < 0)
    best_other = max((r for r in rows[2:] if r["method"] != "tsv_m"), key=lambda r: r["avg"])["method"]
    assert ("tsv_m", best_other) in diffs or best_other == "task_arithmetic"
    assert (tmp_path / "merging.png").is_file() and (tmp_path / "seed-0.json").is_file()

    # The individual fine-tuned row is each fine-tune evaluated on its own task.
    from safetensors.torch import load_file

    from paint.models.clip import load_clip

    bundle = load_clip("paint:tiny")
    pool = bench.make_pool(bundle, names, tmp_path)
    for n in names:
        assert all(r["test_n"][n] == len(pool.task(n).labels["test"]) for r in rows)
        (path,) = tmp_path.glob(f"theta_ft-{n}-*.safetensors")
        assert pool.evaluate_state(load_file(str(path)), "test", [n])[n]["accuracy"] == pytest.approx(ft[n])

    # A rerun keeps the seed's results; asking for fewer methods keeps their rows and measures nothing.
    again = bench.main(argv)
    assert again["results"][0] == json.loads((tmp_path / "seed-0.json").read_text())
    i = argv.index("--methods")
    fewer = argv[: i + 1] + ["tsv_m", "task_arithmetic"] + argv[i + 1 + len(methods) :]
    kept = bench.main(fewer)["results"][0]["rows"]
    assert [r["method"] for r in kept[2:]] == ["tsv_m", "task_arithmetic"]
    assert kept[2] == by["tsv_m"] and kept[3] == by["task_arithmetic"]
