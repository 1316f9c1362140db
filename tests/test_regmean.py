"""RegMean (Jin et al. 2023, arXiv:2212.09849): the closed form against least squares and fusion_bench,
Gram matrices gathered by forward hooks on a tiny CLIP, and ``paint merge`` with ``method: regmean``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from paint.cli import main
from paint.errors import PaintError
from paint.pipeline.merge import MergeConfig, run_merge
from paint.pipeline.regmean import gather_grams, image_tower_linears, model_grams, sample_indices
from paint.weights import io, writer
from paint.weights.methods import METHODS, get_method
from paint.weights.regmean import RegMeanParams, reduce_gram, regmean_combine, with_grams
from paint.weights.stream import merge_state_dicts

FIXTURE = Path(__file__).parent / "fixtures" / "fusion_bench" / "regmean.safetensors"
F64 = torch.float64


def _problem(seed: int, n_models: int = 3, rows: int = 20, out: int = 4, inp: int = 6):
    """Random inputs X_i (correlated columns) and weights W_i of one linear layer."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(rows, inp, generator=g, dtype=F64) @ torch.randn(inp, inp, generator=g, dtype=F64)
          for _ in range(n_models)]  # fmt: skip
    ws = [torch.randn(out, inp, generator=g, dtype=F64) for _ in range(n_models)]
    return xs, ws


# ---------------------------------------------------------------------------- the closed form


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_one_is_the_least_squares_solution(seed):
    """RegMean minimises sum_i ||X_i W^T - X_i W_i^T||^2: lstsq on the stacked inputs gives the same W."""
    xs, ws = _problem(seed)
    merged = regmean_combine(ws, [x.T @ x for x in xs], alpha=1.0)
    stacked_x = torch.cat(xs)
    stacked_y = torch.cat([x @ w.T for x, w in zip(xs, ws)])
    direct = torch.linalg.lstsq(stacked_x, stacked_y, driver="gelsd").solution.T
    assert merged.dtype == F64 and merged.shape == ws[0].shape
    diff = float((merged - direct).abs().max())
    assert diff < 1e-12, diff  # measured: 1.5e-15


def test_alpha_zero_is_the_per_dimension_weighted_mean():
    """Off-diagonal entries gone: each input column j is the mean of the W_i[:, j] weighted by G_i[j, j]."""
    xs, ws = _problem(3)
    grams = [x.T @ x for x in xs]
    merged = regmean_combine(ws, grams, alpha=0.0)
    d = torch.stack([g.diagonal() for g in grams])  # (models, in)
    expected = sum(w * di for w, di in zip(ws, d)) / d.sum(0)
    torch.testing.assert_close(merged, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_reduced_gram_formula(alpha):
    """W*^T = (sum_i G~_i)^-1 sum_i G~_i W_i^T, G~ keeping the diagonal and scaling the rest by alpha."""
    xs, ws = _problem(4)
    grams = [x.T @ x for x in xs]
    reduced = [reduce_gram(g, alpha) for g in grams]
    for g, r in zip(grams, reduced):
        assert torch.equal(r.diagonal(), g.diagonal())
        off = ~torch.eye(g.shape[0], dtype=torch.bool)
        torch.testing.assert_close(r[off], alpha * g[off], atol=0, rtol=1e-15)
    expected = torch.linalg.solve(sum(reduced), sum(r @ w.T for r, w in zip(reduced, ws))).T
    torch.testing.assert_close(regmean_combine(ws, grams, alpha), expected, atol=1e-12, rtol=0)


def test_equal_grams_give_the_mean_and_the_dtype_is_kept():
    xs, ws = _problem(5)
    g = xs[0].T @ xs[0]
    w32 = [w.float() for w in ws]
    merged = regmean_combine(w32, [g, g, g], alpha=0.9)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, sum(w32) / 3, atol=1e-6, rtol=0)


def test_singular_cases_stay_finite_and_minimal():
    """A never-activated input keeps the mean's column; too few rows (alpha 1) still minimise the objective."""
    xs, ws = _problem(6)
    xs = [x.clone() for x in xs]
    for x in xs:
        x[:, 2] = 0.0  # input 2 is never active
    merged = regmean_combine(ws, [x.T @ x for x in xs], alpha=0.9)
    torch.testing.assert_close(merged[:, 2], sum(w[:, 2] for w in ws) / 3, atol=1e-12, rtol=0)
    assert torch.isfinite(merged).all()
    short, ws = _problem(7, rows=1)  # 3 rows in all for 6 inputs: sum G_i has rank 3
    merged = regmean_combine(ws, [x.T @ x for x in short], alpha=1.0)
    assert torch.isfinite(merged).all()

    def objective(w):
        return sum(float(((x @ w.T - x @ wi.T) ** 2).sum()) for x, wi in zip(short, ws))

    stacked = torch.linalg.lstsq(torch.cat(short), torch.cat([x @ w.T for x, w in zip(short, ws)]), driver="gelsd")
    assert objective(merged) == pytest.approx(objective(stacked.solution.T), abs=1e-9)


def test_closed_form_errors_are_one_line():
    xs, ws = _problem(8)
    grams = [x.T @ x for x in xs]
    cases = [
        (lambda: regmean_combine(ws, grams[:2], 0.9), "one Gram matrix per weight"),
        (lambda: regmean_combine(ws, grams, 1.5), r"alpha must be in \[0, 1\]"),
        (lambda: regmean_combine([w[0] for w in ws], grams, 0.9), "2-D"),
        (lambda: regmean_combine([ws[0], ws[1], ws[2][:, :5]], grams, 0.9), "weight 2 has shape"),
        (lambda: regmean_combine(ws, [grams[0], grams[1], grams[2][:5, :5]], 0.9), "Gram matrix 2 has shape"),
    ]
    for call, match in cases:
        with pytest.raises(PaintError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "params, field",
    [({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"n_images": 0}, "n_images"),
     ({"batch_size": 0}, "batch_size"), ({"device": "tpu"}, "device"), ({"reduce": 0.9}, "reduce")],
)  # fmt: skip
def test_parameter_errors_are_one_line(params, field):
    with pytest.raises(PaintError, match=field) as e:
        get_method("regmean").parse_params(params)
    assert "\n" not in str(e.value) and "regmean" in str(e.value)


def test_registry_entry_and_defaults():
    m = METHODS["regmean"]
    assert m.needs_data and not m.uses_weights and not m.uses_base
    assert [p.arxiv for p in m.papers] == ["2212.09849"]
    p = m.parse_params({})
    assert (p.alpha, p.n_images, p.batch_size, p.seed, p.device) == (0.9, 256, 64, 0, "auto")
    assert not any(x.needs_data for name, x in METHODS.items() if name != "regmean")
    with pytest.raises(PaintError, match="needs each model's Gram matrices"):  # unbound: not a silent mean
        m.fn(torch.zeros(2, 2), [torch.ones(2, 2)], [1.0], p, "w")
    with pytest.raises(PaintError, match="does not use per-model weights"):
        merge_state_dicts({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], "regmean", weights=[2.0])
    with pytest.raises(PaintError, match="for method 'regmean', not 'linear'"):
        with_grams(get_method("linear"), [{}])


def test_streamed_merge_is_chunk_independent_and_means_the_rest():
    """Weights with Gram matrices are solved whole, the rest is the plain mean; chunking changes no bit."""
    xs, ws = _problem(9, out=40, inp=6)
    g = torch.Generator().manual_seed(10)
    models = [{"layer.weight": w.float(), "layer.bias": torch.randn(40, generator=g),
               "norm.weight": torch.randn(300, generator=g).half(), "ids": torch.arange(4)} for w in ws]  # fmt: skip
    base = {k: torch.zeros_like(v) if v.is_floating_point() else v + 7 for k, v in models[0].items()}
    grams = [{"layer.weight": x.T @ x} for x in xs]
    method = with_grams(get_method("regmean"), grams)
    whole = merge_state_dicts(base, models, method, params={"alpha": 0.9}, chunk_bytes=1 << 30)
    chunked = merge_state_dicts(base, models, method, params={"alpha": 0.9}, chunk_bytes=24)
    for k in base:
        assert torch.equal(whole[k], chunked[k]), k
        assert whole[k].dtype == base[k].dtype
    expected = regmean_combine([m["layer.weight"] for m in models], [x.T @ x for x in xs], 0.9)
    assert torch.equal(whole["layer.weight"], expected)
    torch.testing.assert_close(whole["layer.bias"], sum(m["layer.bias"] for m in models) / 3, atol=1e-6, rtol=0)
    mean_norm = (sum(m["norm.weight"].float() for m in models) / 3).half()
    assert torch.equal(whole["norm.weight"], mean_norm)
    assert torch.equal(whole["ids"], base["ids"])  # integer tensors come from the base
    with pytest.raises(PaintError, match="model 1 has no Gram matrix for 'layer.weight'"):
        merge_state_dicts(base, models, with_grams(get_method("regmean"), [grams[0], {}, grams[2]]))


def test_matches_fusion_bench():
    """fusion_bench 0.2.33's merging_with_regmean_weights (fixture: tests/fixtures/fusion_bench/make_regmean_fixture.py).

    fusion_bench scales the off-diagonal entries by a float32 ratio, so paint is given that float32 value.
    """
    with safe_open(str(FIXTURE), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        cases = json.loads(f.metadata()["cases"])
    names = sorted({k.split("/", 1)[1] for k in t if k.startswith("model0/")})
    models = [{n: t[f"model{i}/{n}"] for n in names} for i in range(3)]
    grams = [{f"{k.split('/', 1)[1]}.weight": v for k, v in t.items() if k.startswith(f"gram{i}/")} for i in range(3)]
    assert sorted(grams[0]) == ["enc.fc1.weight", "enc.fc2.weight"]
    method = with_grams(get_method("regmean"), grams)
    worst = 0.0
    for case, ratio in cases.items():
        alpha = float(torch.tensor(ratio, dtype=torch.float32))
        out = merge_state_dicts(models[0], models, method, params={"alpha": alpha})
        for n in names:
            ref = t[f"{case}/{n}"]
            assert out[n].dtype == ref.dtype == F64
            worst = max(worst, float((out[n] - ref).abs().max()))
            torch.testing.assert_close(out[n], ref, atol=1e-12, rtol=0, msg=f"{case} {n}")
    assert worst < 1e-12  # measured: 1.8e-15


# ---------------------------------------------------------------------------- Gram matrices of a tiny CLIP


def test_sample_indices_are_seeded_distinct_and_capped():
    a = sample_indices(100, 10, seed=3)
    assert len(set(a.tolist())) == 10 and list(a) == sorted(a) and a.max() < 100
    assert (a == sample_indices(100, 10, seed=3)).all() and not (a == sample_indices(100, 10, seed=4)).all()
    assert sample_indices(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_gram_gathering_on_a_tiny_clip(tiny_clip_dir, one_torch_thread):
    from paint.models.clip import load_clip

    bundle = load_clip(str(tiny_clip_dir))
    model = bundle.model
    layers = image_tower_linears(model)
    # 2 layers x (q, k, v, out, fc1, fc2) and the projection; nothing of the text tower
    assert len(layers) == 13 and "visual_projection" in layers
    assert not any(name.startswith("text") for name in layers)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gs = gather_grams(model, images, bundle.spec, batch_size=4)
    tokens = (16 // 4) ** 2 + 1  # 16 patches and the class token
    assert gs.images == 10 and set(gs.grams) == {f"{n}.weight" for n in layers}
    for key, g in gs.grams.items():
        width = layers[key.removesuffix(".weight")].in_features
        assert g.dtype == F64 and g.shape == (width, width) and g.device.type == "cpu"
        assert gs.rows[key] == (10 if key == "visual_projection.weight" else 10 * tokens), key
        torch.testing.assert_close(g, g.T, atol=0, rtol=0)
    assert gs.nbytes == sum(8 * g.shape[0] ** 2 for g in gs.grams.values())
    # the projection's Gram matrix is the pooled features' X^T X; the hooks are gone afterwards
    from paint.data.preprocess import normalize

    with torch.no_grad():
        pooled = model.vision_model(pixel_values=normalize(images, bundle.spec.mean, bundle.spec.std)).pooler_output
    x = pooled.double()
    torch.testing.assert_close(gs.grams["visual_projection.weight"], x.T @ x, atol=1e-9, rtol=1e-9)
    assert all(not m._forward_hooks for m in layers.values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched


# ---------------------------------------------------------------------------- paint merge


def _finetuned(base_dir: Path, out: Path, seed: int) -> Path:
    """A weights-only checkpoint: the base with its image tower perturbed."""
    sd = io.load_state_dict(base_dir)
    g = torch.Generator().manual_seed(seed)
    tower = ("vision_model.", "visual_projection.")
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) if k.startswith(tower) and v.is_floating_point() else v
          for k, v in sd.items()}  # fmt: skip
    return writer.save_state_dict(ft, out)


@pytest.fixture(scope="module")
def ft_dirs(tiny_clip_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("regmean")
    return [_finetuned(tiny_clip_dir, root / f"ft{i}", seed=i) for i in (1, 2)]


PARAMS = {"n_images": 12, "batch_size": 5, "device": "cpu", "alpha": 0.8}


def test_paint_merge_regmean_end_to_end(tiny_clip_dir, ft_dirs, tmp_path, capsys, one_torch_thread):
    from paint.data.spec import TaskSpec
    from paint.models.clip import load_clip

    tasks = [{"name": "digits"}, {"name": "digits"}]
    cfg = {
        "base": str(tiny_clip_dir),
        "models": [{"path": str(p), "task": t} for p, t in zip(ft_dirs, tasks)],
        "method": "regmean",
        "parameters": PARAMS,
        "output": str(tmp_path / "merged"),
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--no-progress"]) == 0
    assert "with regmean" in capsys.readouterr().out
    bundle = load_clip(str(tmp_path / "merged"))  # a loadable model: config, tokenizer, processor carried
    merged = {k: v for k, v in bundle.model.state_dict().items()}
    fts = [io.load_state_dict(p) for p in ft_dirs]
    base = io.load_state_dict(tiny_clip_dir)
    # the same Gram matrices again, and the closed form on them
    readers = [io.CheckpointReader(p) for p in ft_dirs]
    specs = [TaskSpec(**t) for t in tasks]
    sets = model_grams(str(tiny_clip_dir), list(zip(readers, specs)), RegMeanParams(**PARAMS))
    assert [s.images for s in sets] == [12, 12]
    assert len(sets[0].grams) == 13 and not torch.equal(sets[0].grams["visual_projection.weight"],
                                                        sets[1].grams["visual_projection.weight"])  # fmt: skip
    for key in sets[0].grams:
        expected = regmean_combine([f[key] for f in fts], [s.grams[key] for s in sets], 0.8)
        assert torch.equal(merged[key], expected), key
        assert not torch.allclose(merged[key], (fts[0][key] + fts[1][key]) / 2, atol=1e-5)  # not the mean
    for key in ("vision_model.encoder.layers.0.mlp.fc1.bias", "vision_model.post_layernorm.weight"):
        torch.testing.assert_close(merged[key], (fts[0][key] + fts[1][key]) / 2, atol=1e-6, rtol=0)
    text = "text_model.encoder.layers.0.self_attn.q_proj.weight"  # identical in both models: their mean
    assert torch.equal(merged[text], base[text])
    out = tmp_path / "merged"
    summary = json.loads((out / "merge_summary.json").read_text())
    assert summary["method"] == "regmean" and summary["parameters"]["alpha"] == 0.8
    card = (out / "README.md").read_text()
    assert "2212.09849" in card and "digits" in card


def test_tasks_are_checked_before_any_work(tiny_clip_dir, ft_dirs, tmp_path):
    models = [{"path": str(p), "task": {"name": "digits"}} for p in ft_dirs]
    out = tmp_path / "out"

    def cfg(**kw):
        return MergeConfig(**{"base": str(tiny_clip_dir), "models": models, "method": "regmean",
                              "parameters": PARAMS, "output": str(out), **kw})  # fmt: skip

    cases = [
        (cfg(models=[models[0], {"path": str(ft_dirs[1])}]), f"model {ft_dirs[1]} has none"),
        (cfg(method="linear", parameters={}), "a task is only used by method 'regmean', not 'linear'"),
        (cfg(base=str(ft_dirs[0] / "model.safetensors")), "must be a model directory"),
        (cfg(base=str(ft_dirs[0])), "has no config.json"),
        (cfg(parameters={"alpha": 2}), "alpha"),
        (cfg(models=[{**m, "weight": 0.5} for m in models]), "does not use per-model weights"),
    ]
    for c, match in cases:
        with pytest.raises(PaintError, match=match) as e:
            run_merge(c, progress=False)
        assert "\n" not in str(e.value)
        assert not out.exists()


def test_a_bad_task_fails_in_one_line_and_writes_nothing(tiny_clip_dir, ft_dirs, tmp_path):
    models = [
        {"path": str(ft_dirs[0]), "task": {"name": "digits"}},
        {"path": str(ft_dirs[1]), "task": {"name": "nope"}},
    ]
    cfg = MergeConfig(base=str(tiny_clip_dir), models=models, method="regmean", parameters=PARAMS,
                      output=str(tmp_path / "out"))  # fmt: skip
    with pytest.raises(PaintError, match="nope") as e:
        run_merge(cfg, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
