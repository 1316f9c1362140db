"""Per-block coefficients: the functional forward, and the lines / blockwise strategies and entropy objective."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paint.errors import PaintError
from paint.selection import SelectionConfig
from paint.selection.blockwise import (
    Entropy,
    GradientStep,
    VectorEvaluator,
    block_objective,
    lines_vector,
    search_blockwise,
    search_lines,
)
from paint.selection.objectives import TaskGroups

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n, size, seed, palette):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(palette), n)
    imgs = np.asarray(palette, np.float32)[labels][:, :, None, None] + rng.normal(0, 25, (n, 3, size, size))
    return torch.from_numpy(imgs.clip(0, 255).astype(np.uint8)), labels


@pytest.fixture(scope="module")
def tiny(tiny_clip_dir):
    """The tiny CLIP, a perturbed 'fine-tuned' tower, a patching task and a support task (val split only)."""
    from paint.evaluation.functional import BlockBasis, TaskData
    from paint.models.clip import load_clip
    from paint.models.heads import zeroshot_head

    bundle = load_clip(str(tiny_clip_dir))
    zs = {k: v.clone() for k, v in bundle.image_tower_state().items()}
    g = torch.Generator().manual_seed(1)
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in zs.items()}
    size = bundle.spec.crop
    pal_p = [[200, 30, 30], [30, 200, 30], [30, 30, 200]]
    pal_s = [[90, 90, 90], [160, 160, 160]]
    xp, yp = _images(48, size, 0, pal_p)
    xs, ys = _images(48, size, 1, pal_s)
    patch = TaskData("rgb", xp, yp, zeroshot_head(bundle, ["red", "green", "blue"], ["a photo of the {}."]))
    support = TaskData("sup", xs, ys, zeroshot_head(bundle, ["circle", "square"], ["a photo of the {}."]))
    return bundle, BlockBasis(zs, [ft]), patch, support


def test_functional_forward_equals_the_model_with_loaded_weights(tiny):
    from paint.evaluation.functional import tower_features
    from paint.evaluation.line import set_image_tower
    from paint.models.clip import image_features

    bundle, basis, patch, _ = tiny
    x = [0.1, 0.9, 0.4, 0.7]
    state = basis.state(x)
    pixels = torch.randn(5, 3, bundle.spec.crop, bundle.spec.crop)
    with torch.no_grad():
        functional = tower_features(bundle.model, state, pixels)
        differentiable = tower_features(bundle.model, basis.params(torch.tensor(x, dtype=torch.float64)), pixels)
        before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
        set_image_tower(bundle.model, state)
        loaded = image_features(bundle.model, pixels)
        set_image_tower(bundle.model, basis.theta_zs)
    torch.testing.assert_close(functional, loaded, rtol=0, atol=0)
    torch.testing.assert_close(differentiable, loaded, rtol=1e-5, atol=1e-5)
    # functional_call left the model's own weights alone.
    assert all(torch.equal(v, before[k]) for k, v in bundle.model.state_dict().items())


def _tiny_evaluator(tiny, cfg, patch_labels=True):
    from paint.evaluation.functional import TaskData, measure_state

    bundle, basis, patch, support = tiny
    if not patch_labels:
        patch = TaskData(patch.name, patch.images, np.full(len(patch.labels), -1), patch.head)
    data = [patch, support]

    def measure(x):
        return measure_state(bundle.model, basis.state(x), data, bundle.spec)

    ev = VectorEvaluator(measure, block_objective(cfg, [patch.name], [support.name]), basis.size, cfg.max_evals())
    return ev, patch, support


def test_blockwise_on_a_tiny_model_reduces_its_objective(tiny):
    from paint.evaluation.functional import PenalisedLoss

    bundle, basis, _, _ = tiny
    cfg = SelectionConfig(
        strategy="blockwise",
        objective="loss_sum",
        alphas=[0.0, 0.5, 1.0],
        blockwise={"steps": 12, "lr": 0.1, "eval_every": 3, "batch": 48},
    )
    ev, patch, support = _tiny_evaluator(tiny, cfg)
    oracle = PenalisedLoss(bundle.model, basis, bundle.spec, [patch], [support], batch=48)
    grid_best = None
    result = search_blockwise(ev, oracle, cfg)
    grid_best = min(e.value for e in result.evaluations if e.source == "grid")
    assert result.n_grad_evals == 12 and result.n_model_evals == 3 + 4  # grid (its 0 is the reference), 4 iterates
    assert result.value < grid_best  # gradient steps found a better per-block point than the single-alpha grid
    assert len(set(result.alphas)) > 1 and all(0.0 <= a <= 1.0 for a in result.alphas)
    # The penalised loss (full batch: deterministic) fell from the start to the answer.
    start = np.asarray(next(e.alphas for e in result.evaluations if e.value == grid_best))
    assert oracle(np.asarray(result.alphas), 1.0).value < oracle(start, 1.0).value


def test_blockwise_never_returns_an_infeasible_point_when_a_feasible_one_was_seen():
    """A greedy oracle walks into the infeasible region, where the value is better; the answer stays feasible."""
    cfg = SelectionConfig(strategy="blockwise", alphas=[0.0, 0.5, 1.0], blockwise={"steps": 30, "eval_every": 2})

    def measure(x):  # patching accuracy rises with every alpha; support falls with the last block's
        x = np.asarray(x)
        return {"p": {"accuracy": 0.2 + 0.8 * float(x.mean())}, "s": {"accuracy": 0.9 - 0.2 * float(x[-1])}}

    ev = VectorEvaluator(measure, block_objective(cfg, ["p"], ["s"]), 3, cfg.max_evals())

    def oracle(x, lam):  # ignores the support term: always pushes every alpha up
        return GradientStep(-float(np.sum(x)), -np.ones_like(x), -float(np.sum(x)), 0.0)

    result = search_blockwise(ev, oracle, cfg)
    assert any(not e.feasible for e in result.evaluations)  # it did wander off
    assert result.feasible
    assert 0.9 - 0.2 * result.alphas[-1] >= 0.9 - 0.01 - 1e-12
    assert result.value <= min(e.value for e in result.evaluations if e.feasible)
    # Each infeasible iterate tightened the support budget.
    assert result.history[-1]["budget"] < result.history[0]["budget"]


def test_entropy_needs_no_labels(tiny):
    """Patching labels of -1: neither the measure, the objective nor the gradient read them."""
    from paint.evaluation.functional import PenalisedLoss

    bundle, basis, _, _ = tiny
    cfg = SelectionConfig(
        strategy="blockwise", objective="entropy", alphas=[0.0, 1.0], blockwise={"steps": 4, "eval_every": 2}
    )
    ev, patch, support = _tiny_evaluator(tiny, cfg, patch_labels=False)
    oracle = PenalisedLoss(bundle.model, basis, bundle.spec, [patch], [support], entropy=True, batch=16)
    result = search_blockwise(ev, oracle, cfg)
    assert result.objective == "entropy" and result.n_grad_evals == 4
    for e in result.evaluations:
        assert "accuracy" not in e.metrics["rgb"] and "loss" not in e.metrics["rgb"]
        assert e.metrics["rgb"]["entropy"] > 0
    assert result.value == min(e.metrics["rgb"]["entropy"] for e in result.evaluations if e.feasible)
    # A label-needing patch term on the same data fails loudly instead of reading -1.
    ce = PenalisedLoss(bundle.model, basis, bundle.spec, [patch], [support], entropy=False, batch=16)
    with pytest.raises((IndexError, RuntimeError)):
        ce(np.zeros(basis.size), 1.0)


def test_entropy_objective_keeps_the_support_bound():
    obj = Entropy(TaskGroups(("p",), ("s",)), epsilon=1.0, constraint="mean")
    ref = {"p": {"entropy": 1.0}, "s": {"accuracy": 0.9}}
    ok = {"p": {"entropy": 0.5}, "s": {"accuracy": 0.895}}
    bad = {"p": {"entropy": 0.1}, "s": {"accuracy": 0.85}}
    assert obj.feasible(ok, ref) and obj.value(ok, ref) == 0.5
    assert not obj.feasible(bad, ref) and obj.value(bad, ref) > obj.value(ok, ref)


def test_lines_extends_the_grid_and_finds_a_sloped_optimum():
    depths = [0.0, 1 / 3, 2 / 3, 1.0]
    cfg = SelectionConfig(strategy="lines", alphas=[0.0, 0.25, 0.5, 0.75, 1.0], budget=40)

    def measure(x):  # support only cares about deep blocks, the patching task about all of them
        x = np.asarray(x)
        return {"p": {"accuracy": float(x.mean())}, "s": {"accuracy": 0.9 - 0.1 * float(x[-1])}}

    ev = VectorEvaluator(measure, block_objective(cfg, ["p"], ["s"]), 4, cfg.max_evals())
    result = search_lines(ev, depths, cfg)
    grid = [e for e in result.evaluations if e.source == "grid"]
    assert [e.alphas for e in grid] == [tuple([a] * 4) for a in cfg.points()]
    assert result.feasible and result.n_model_evals <= 40
    assert result.value < min(e.value for e in grid if e.feasible)  # a slope beats every single alpha
    assert result.alphas[0] == 1.0 and result.alphas[-1] <= 0.1 + 1e-9
    assert list(result.alphas) == pytest.approx(lines_vector(depths, result.alphas[0], result.alphas[-1]))
    # Several task vectors share the one line (2 free coefficients in all).
    ev2 = VectorEvaluator(lambda x: measure(x[:4]), block_objective(cfg, ["p"], ["s"]), 8, cfg.max_evals())
    two = search_lines(ev2, depths, cfg, n_vectors=2)
    assert two.alphas[:4] == two.alphas[4:] == result.alphas


def test_selection_config_names_the_per_block_choices():
    assert SelectionConfig(strategy="lines").max_evals() == 11 * 11 + 16
    assert SelectionConfig(strategy="blockwise", blockwise={"steps": 40, "eval_every": 5}).max_evals() == 11 + 8
    with pytest.raises(ValueError, match="objective 'entropy' needs strategy 'grid', 'lines' or 'blockwise'"):
        SelectionConfig(strategy="bounded", objective="entropy")
    from paint.selection import evaluator_for, run_search

    cfg = SelectionConfig(strategy="lines")
    with pytest.raises(PaintError, match="chooses per-block coefficients"):
        run_search(evaluator_for(cfg, lambda a, g: {}, ["p"]), cfg)


def _config(tmp_path, model, selection):
    import yaml

    cfg = {
        "model": str(model),
        "output_dir": str(tmp_path / "run"),
        "patch_tasks": ["digits"],
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 64, "warmup_steps": 2, "max_steps": 3},
        "selection": selection,
        "eval_batch_size": 512,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_patch_with_blockwise_writes_the_per_block_checkpoint(tiny_clip_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from paint.cli import main
    from paint.weights.blocks import interpolate_blocks

    selection = {"strategy": "blockwise", "objective": "loss_sum", "alphas": [0.0, 1.0], "blockwise": {"steps": 2}}
    assert main(["patch", str(_config(tmp_path, tiny_clip_dir, selection))]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    alphas = summary["block_alphas"]
    assert list(alphas) == ["embeddings", "layer.0", "layer.1", "head"]
    search = summary["selection"]["search"]
    assert search["free_coefficients"] == 4 and search["gradient_steps"] == 2
    assert summary["selection"]["rule"] == "search:blockwise/loss_sum"
    assert "Per-block alphas" in (run / "summary.md").read_text()
    assert "per block (the alpha above is their mean): embeddings" in capsys.readouterr().out
    # The checkpoint is the per-block formula applied to theta_zs and theta_ft.
    from paint.models.clip import load_clip

    zs = load_clip(str(tiny_clip_dir)).image_tower_copy()
    trained = load_file(str(run / "finetune" / "checkpoint" / "trainable.safetensors"))
    ft = {k: trained.get(k, v) for k, v in zs.items()}
    want = interpolate_blocks(zs, ft, alphas)
    got = load_file(str(run / "model" / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_parallel_mode_with_blockwise_has_one_vector_per_task(tiny_clip_dir, tmp_path):
    from paint.evaluation.results import ResultsStore
    from paint.models.clip import load_clip
    from paint.pipeline.multitask import MultitaskRun, run_mode
    from paint.pipeline.pool import TaskPool
    from paint.train.finetune import FinetuneConfig
    from paint.weights.blocks import add_block_task_vectors
    from paint.weights.ops import task_vector
    from tests.test_multitask import FT, _prepared

    bundle = load_clip(str(tiny_clip_dir))
    tasks = [
        _prepared(bundle, "rgb", "patch", ["red", "green", "blue"], [[200, 30, 30], [30, 200, 30], [30, 30, 200]], 0),
        _prepared(bundle, "cmy", "patch", ["cat", "dog"], [[30, 200, 200], [200, 200, 30]], 10),
        _prepared(bundle, "sup", "support", ["circle", "square"], [[90, 90, 90], [160, 160, 160]], 20),
    ]
    theta_zs = {k: v.clone() for k, v in bundle.image_tower_state().items()}
    selection = SelectionConfig(strategy="blockwise", alphas=[0.0, 0.5, 1.0], blockwise={"steps": 4, "eval_every": 2})
    pool = TaskPool(bundle.model, bundle.spec, tasks, ResultsStore(tmp_path / "results.jsonl"), 64)
    ctx = MultitaskRun(pool, theta_zs, selection, FinetuneConfig(**FT), tmp_path, False, "test")
    r = run_mode(ctx, "parallel")
    (choice,) = r.choices
    assert len(choice.block_alphas) == 2 and all(len(v) == 4 for v in choice.block_alphas)
    assert choice.search["free_coefficients"] == 8 and choice.search["gradient_steps"] == 4
    ctx.resume = True  # the fine-tunes again, read back from their finished checkpoints
    thetas = [
        {**theta_zs, **ctx.finetune_from(theta_zs, [n], f"parallel/{i}-{n}/finetune")} for i, n in enumerate(ctx.patch)
    ]
    want = add_block_task_vectors(theta_zs, [task_vector(theta_zs, t) for t in thetas], choice.block_alphas)
    assert all(torch.equal(r.theta[k], want[k]) for k in want)
    assert r.alphas == pytest.approx([sum(v.values()) / 4 for v in choice.block_alphas])


def test_a_workflow_that_reads_one_alpha_refuses_per_block_selection(tiny):
    from paint.evaluation.results import MemoryStore
    from paint.pipeline.operation import choose
    from paint.pipeline.pool import Line, TaskPool

    bundle, basis, _, _ = tiny
    pool = TaskPool(bundle.model, bundle.spec, [], MemoryStore())
    line = Line.between(basis.theta_zs, basis.thetas[0])
    with pytest.raises(PaintError, match="chooses per-block alphas, which paint patch and paint multitask support"):
        choose(pool, line, SelectionConfig(strategy="lines"), ["p"], [])


def test_per_block_measurements_are_stored_and_read_back(tiny, tmp_path, monkeypatch):
    import paint.pipeline.perblock as perblock
    from paint.evaluation.results import ResultsStore
    from paint.pipeline.pool import TaskPool

    bundle, basis, patch, support = tiny
    pool = TaskPool(bundle.model, bundle.spec, [], ResultsStore(tmp_path / "results.jsonl"))
    x = [0.1, 0.2, 0.3, 0.4]
    first = perblock.stored_measure(pool, basis, [patch, support], x, False)
    assert set(first["rgb"]) == {"accuracy", "loss", "entropy", "n"}
    calls = []
    real = perblock.measure_state
    monkeypatch.setattr(perblock, "measure_state", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = TaskPool(bundle.model, bundle.spec, [], ResultsStore(tmp_path / "results.jsonl"))  # a resumed run
    assert perblock.stored_measure(again, basis, [patch, support], x, False) == first
    assert not calls  # read back from results.jsonl, not measured
    perblock.stored_measure(again, basis, [patch, support], x, True)  # hidden labels: another key
    assert len(calls) == 1
