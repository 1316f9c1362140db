"""Parallel patching's combine step: every merge method, lambda chosen on validation, checked at the config edge."""

from __future__ import annotations

import json

import pytest
import torch

from paint.errors import PaintError
from paint.selection import SelectionConfig
from paint.weights.methods import METHODS, get_method
from tests.test_multitask import FT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def ctx(tiny_clip_dir, tmp_path):
    from paint.evaluation.results import ResultsStore
    from paint.models.clip import load_clip
    from paint.pipeline.multitask import MultitaskRun
    from paint.pipeline.pool import TaskPool
    from paint.train.finetune import FinetuneConfig
    from tests.test_multitask import _prepared

    bundle = load_clip(str(tiny_clip_dir))
    tasks = [
        _prepared(bundle, "rgb", "patch", ["red", "green", "blue"], [[200, 30, 30], [30, 200, 30], [30, 30, 200]], 0),
        _prepared(bundle, "cmy", "patch", ["cat", "dog"], [[30, 200, 200], [200, 200, 30]], 10),
        _prepared(bundle, "sup", "support", ["circle", "square"], [[90, 90, 90], [160, 160, 160]], 20),
    ]
    theta_zs = {k: v.clone() for k, v in bundle.image_tower_state().items()}
    selection = SelectionConfig(strategy="grid", objective="mean_accuracy", alphas=[0.0, 0.5, 1.0], budget=3)
    pool = TaskPool(bundle.model, bundle.spec, tasks, ResultsStore(tmp_path / "results.jsonl"), 64, bundle=bundle)
    return MultitaskRun(pool, theta_zs, selection, FinetuneConfig(**FT), tmp_path, False, "test")


def _thetas(ctx):
    return [ctx.finetune_from(ctx.theta_zs, [n], f"parallel/{i}-{n}/finetune") for i, n in enumerate(ctx.patch)]


def test_a_merge_method_chooses_its_lambda_on_validation_on_its_own_grid(ctx):
    from paint.pipeline.combine import CombineConfig, merge_states
    from paint.pipeline.multitask import run_mode

    cfg = CombineConfig(method="tsv_m", scalings=[0.5, 1.0, 2.0])
    r = run_mode(ctx, "parallel", combine=cfg)
    (choice,) = r.choices
    # The grid is the scalings on the line theta_zs -> merge(2.0) (alpha = lambda / 2), with alpha 0 added.
    assert [p["alpha"] for p in choice.sweep] == [0.0, 0.25, 0.5, 1.0]
    assert r.alphas == [r.combine["scaling"]] and r.combine["scaling"] in (0.0, 0.5, 1.0, 2.0)
    assert r.combine["method"] == "tsv_m" and r.combine["scalings"] == [0.5, 1.0, 2.0]
    assert r.n_finetunes == 2 and r.n_model_evals == 4
    # The chosen point is the method's own merge at that lambda (up to the line's rounding).
    method = get_method("tsv_m")
    want = merge_states(method, method.parse_params({"scaling": r.alphas[0]}), ctx.theta_zs, _thetas(ctx))
    for k in want:
        torch.testing.assert_close(r.theta[k], want[k], rtol=0, atol=1e-5)


def test_every_merge_method_is_a_combine_step(ctx):
    from paint.pipeline.combine import CombineConfig
    from paint.pipeline.multitask import run_mode

    for name in METHODS:
        r = run_mode(ctx, "parallel", combine=CombineConfig(method=name, scalings=[0.5, 1.0]))
        assert set(r.theta) == set(ctx.theta_zs), name
        assert all(torch.isfinite(v).all() for v in r.theta.values() if v.is_floating_point()), name
        assert r.combine["method"] == name and r.combine["scaling"] in (0.0, 0.5, 1.0), name
    # Without a coefficient (model_stock, regmean, linear) and no scalings, the merge is taken as is.
    r = run_mode(ctx, "parallel", combine=CombineConfig(method="regmean", parameters={"n_images": 16}))
    assert r.alphas == [] and r.choices == [] and r.combine["scaling"] is None
    assert r.combine["parameters"]["n_images"] == 16


def test_per_task_is_the_default_and_unchanged(ctx):
    from paint.pipeline.combine import CombineConfig
    from paint.pipeline.multitask import run_mode

    a = run_mode(ctx, "parallel")
    b = run_mode(ctx, "parallel", combine=CombineConfig(method="per_task"))
    assert a.alphas == b.alphas and len(a.alphas) == 2 and all(torch.equal(a.theta[k], b.theta[k]) for k in a.theta)
    assert a.combine == {"method": "per_task", "sweeps": 1}


@pytest.mark.parametrize(
    ("combine", "message"),
    [
        ({"method": "tsv_m", "parameters": {"rank_fraction": 2}}, "rank_fraction: Input should be less than or equal"),
        ({"method": "ties", "parameters": {"scaling": 1.0}}, "is chosen on validation from combine.scalings"),
        ({"method": "dare_ties", "parameters": {"bogus": 1}}, "bogus: unknown field"),
        ({"method": "nope"}, "unknown combine method 'nope'"),
        ({"method": "per_task", "scalings": [1.0]}, "per_task takes no parameters or scalings"),
        ({"method": "iso_c", "scalings": [0.0, 1.0]}, "scaling 0.0 is outside"),
    ],
)
def test_a_bad_combine_setting_is_one_line_at_the_config_edge(combine, message):
    from paint.config import parse_config
    from paint.pipeline.multitask import MultitaskConfig

    base = {"output_dir": "unused", "patch_tasks": ["digits", "counting"], "modes": ["parallel"]}
    with pytest.raises(PaintError, match="combine") as e:
        parse_config(MultitaskConfig, {**base, "combine": combine})
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PaintError, match="merges at least 2 fine-tunes"):
        parse_config(MultitaskConfig, {**base, "patch_tasks": ["digits"], "combine": {"method": "model_stock"}})
    with pytest.raises(PaintError, match="add 'parallel' to modes"):
        parse_config(MultitaskConfig, {**base, "modes": ["joint"], "combine": {"method": "ties"}})


def test_paint_multitask_with_tsv_m_end_to_end_and_a_bad_parameter_exits_2(tiny_clip_dir, tmp_path, capsys):
    import yaml

    from paint.cli import main

    cfg = {
        "model": str(tiny_clip_dir),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits", "colours"],
        "support_tasks": ["shapes"],
        "modes": ["parallel"],
        "combine": {"method": "tsv_m", "parameters": {"rank_fraction": 0.5}, "scalings": [0.5, 1.0, 1.5]},
        "finetune": {**{k: v for k, v in FT.items() if k != "cpu"}, "max_steps": 2},
        "save_models": True,
        "threads": 1,
    }
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["multitask", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "comparison.json").read_text())
    parallel = summary["modes"]["parallel"]
    assert parallel["combine"]["method"] == "tsv_m" and parallel["combine"]["parameters"]["rank_fraction"] == 0.5
    assert parallel["alphas"] == [parallel["combine"]["scaling"]] and parallel["finetunes"] == 2
    assert (tmp_path / "run" / "parallel" / "model" / "model.safetensors").is_file()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["combine"]["method"] == "tsv_m"
    capsys.readouterr()

    cfg["combine"] = {"method": "tsv_m", "parameters": {"rank_fraction": 2}}
    cfg["output_dir"] = str(tmp_path / "bad")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["multitask", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "rank_fraction" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_dare_seed_follows_the_run_seed_and_an_explicit_seed_wins(ctx, monkeypatch):
    import paint.pipeline.combine as combine
    from paint.pipeline.combine import CombineConfig, bound_method, combine_parallel, merge_states

    thetas = _thetas(ctx)

    def merged(cfg, seed):
        method, params = bound_method(cfg, ctx.pool, ctx.theta_zs, thetas, ctx.patch, seed)
        return params.seed, merge_states(method, params, ctx.theta_zs, thetas)

    dare = CombineConfig(method="dare_task_arithmetic", parameters={"drop_rate": 0.5})
    (s0, a), (s1, b) = merged(dare, 0), merged(dare, 1)
    assert (s0, s1) == (0, 1) and any(not torch.equal(a[k], b[k]) for k in a)  # two run seeds, two drop masks
    fixed = CombineConfig(method="dare_task_arithmetic", parameters={"drop_rate": 0.5, "seed": 5})
    (f0, a), (f1, b) = merged(fixed, 0), merged(fixed, 1)
    assert (f0, f1) == (5, 5) and all(torch.equal(a[k], b[k]) for k in a)  # an explicit seed is kept
    # combine_parallel merges the line's end (the largest lambda) with that seed, and records it.
    merges = []
    monkeypatch.setattr(
        combine, "merge_states", lambda m, params, *a: merges.append(params.seed) or merge_states(m, params, *a)
    )
    cfg = CombineConfig(method="dare_ties", parameters={"drop_rate": 0.5}, scalings=[0.5, 1.0])
    for seed in (0, 3):
        r = combine_parallel(ctx.chooser(), cfg, ctx.theta_zs, thetas, ctx.patch, seed=seed)
        assert r.record["parameters"]["seed"] == seed and merges.pop() == seed
    r = combine_parallel(
        ctx.chooser(), fixed.model_copy(update={"scalings": [1.0]}), ctx.theta_zs, thetas, ctx.patch, seed=3
    )
    assert r.record["parameters"]["seed"] == 5 and merges == [5]


def test_parallel_mode_passes_the_fine_tuning_seed_to_the_combine_step(ctx, monkeypatch):
    import paint.pipeline.multitask as mt
    from paint.pipeline.combine import CombineConfig

    seen = []
    real = mt.combine_parallel

    def spy(*args, **kwargs):
        seen.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mt, "combine_parallel", spy)
    ctx.finetune = ctx.finetune.model_copy(update={"seed": 4})
    r = mt.run_mode(ctx, "parallel", combine=CombineConfig(method="dare_ties", scalings=[1.0]))
    assert seen == [4] and r.combine["parameters"]["seed"] == 4


def test_paint_patch_with_several_tasks_takes_the_combine_setting(monkeypatch):
    import paint.pipeline.multitask as mt
    from paint.config import parse_config
    from paint.pipeline.patch import PatchConfig, run_patch

    base = {"output_dir": "unused", "patch_tasks": ["digits", "counting"], "modes": ["parallel"]}
    cfg = parse_config(PatchConfig, {**base, "combine": {"method": "ties", "parameters": {"density": 0.3}}})
    passed = []
    monkeypatch.setattr(mt, "run_multitask", lambda c, resume=False: passed.append(c) or {})
    run_patch(cfg)
    assert passed[0].combine == cfg.combine and passed[0].combine.parameters == {"density": 0.3}
    assert parse_config(PatchConfig, base).combine.method == "per_task"
    cases = [
        ({**base, "modes": ["joint"], "combine": {"method": "ties"}}, "add 'parallel' to modes"),
        ({**base, "patch_tasks": ["digits"], "combine": {"method": "ties"}}, "several patch_tasks"),
        ({**base, "combine": {"method": "model_stock", "parameters": {"bogus": 1}}}, "bogus: unknown field"),
    ]
    for raw, message in cases:
        with pytest.raises(PaintError, match="combine") as e:
            parse_config(PatchConfig, raw)
        assert message in str(e.value) and "\n" not in str(e.value)
