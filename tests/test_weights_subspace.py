"""Iso-C, Iso-CTS and TSV-M: each method's defining property, parameters, and ``paint merge`` end to end.

Parity with fusion_bench's own implementations is in ``tests/test_fusion_bench_parity.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from paint.cli import main
from paint.errors import PaintError
from paint.pipeline.merge import CONFIG_NAME, MergeConfig, run_merge
from paint.weights import io, writer
from paint.weights import methods as M
from paint.weights.stream import merge_state_dicts
from paint.weights.subspace import (
    LazyTaskVectors,
    iso_c_delta,
    iso_cts_delta,
    iso_cts_split,
    mean_delta,
    orthonormal_factor,
    tsv_m_delta,
    tsv_rank,
)

SVD_METHODS = ("iso_c", "iso_cts", "tsv_m")


def _run(name, base, models, weights=None, key="w", **params):
    m = M.get_method(name)
    return m.fn(base, models, weights or [1.0] * len(models), m.parse_params(params), key)


def _models(shape, n=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return base, [base + (0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype) for _ in range(n)]


def _singular_values(delta):
    return torch.linalg.svdvals(delta.double())


@pytest.mark.parametrize("shape", [(16, 12), (8, 8), (6, 10)])
def test_iso_c_delta_has_equal_singular_values_along_the_sum(shape):
    base, models = _models(shape, dtype=torch.float64)
    out = _run("iso_c", base, models, scaling=0.7)
    s = _singular_values(out - base)
    total = sum(m - base for m in models)
    expected = torch.linalg.svdvals(total).mean() * 0.7
    torch.testing.assert_close(s, torch.full_like(s, float(expected)), atol=1e-12, rtol=0)
    # and the same singular vectors as the summed task vectors: U (mean S) V^T
    u, _, vh = torch.linalg.svd(total, full_matrices=False)
    torch.testing.assert_close(out - base, (u * expected) @ vh, atol=1e-12, rtol=0)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.8, 1.0])
def test_iso_cts_delta_is_isotropic_and_fraction_one_is_iso_c(fraction):
    base, models = _models((16, 12), dtype=torch.float64)
    out = _run("iso_cts", base, models, common_space_fraction=fraction)
    s = _singular_values(out - base)
    torch.testing.assert_close(s, torch.full_like(s, float(s.mean())), atol=1e-12, rtol=0)
    if fraction == 1.0:  # the whole rank is common: Iso-C
        torch.testing.assert_close(out, _run("iso_c", base, models), atol=1e-12, rtol=0)


def test_iso_cts_split_follows_fusion_bench_rounding():
    # int(rank * fraction), the task-specific rest rounded (half to even) to a multiple of the tasks
    assert iso_cts_split(768, 8, 0.8) == (616, 19)  # 154 / 8 = 19.25 -> 19
    assert iso_cts_split(768, 20, 0.8) == (608, 8)  # 154 / 20 = 7.7 -> 8: the common part shrinks
    assert iso_cts_split(12, 3, 0.8) == (9, 1)  # int(9.6) = 9, 3 / 3 = 1
    for rank, tasks, fraction in [(768, 14, 0.0), (2, 3, 0.3), (50, 8, 0.5), (7, 2, 0.1)]:
        common, per_task = iso_cts_split(rank, tasks, fraction)
        assert common >= 0 and per_task >= 0 and common + tasks * per_task == rank


def test_tsv_m_one_task_at_full_rank_is_task_arithmetic():
    for shape in [(16, 12), (6, 10)]:
        base, (model,) = _models(shape, n=1)
        out = _run("tsv_m", base, [model], scaling=0.6)
        expected = _run("task_arithmetic", base, [model], scaling=0.6)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_tsv_m_of_task_vectors_in_orthogonal_subspaces_is_their_sum():
    """Nothing to decorrelate: each task's top-k components are already orthogonal to the others'."""
    g = torch.Generator().manual_seed(3)
    q_left, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    q_right, _ = torch.linalg.qr(torch.randn(9, 9, generator=g, dtype=torch.float64))
    # rank 9, 3 tasks: k = 3; task i uses directions 3i..3i+2 on both sides
    taus = [q_left[:, 3 * i : 3 * i + 3] @ torch.diag(torch.tensor([3.0, 2.0, 1.0]) * (i + 1)).double()
            @ q_right[:, 3 * i : 3 * i + 3].T for i in range(3)]  # fmt: skip
    base = torch.randn(12, 9, generator=g, dtype=torch.float64)
    out = _run("tsv_m", base, [base + t for t in taus])
    torch.testing.assert_close(out, base + sum(taus), atol=1e-12, rtol=0)


def test_tsv_m_keeps_rank_over_tasks_and_zero_components_leave_the_base():
    assert tsv_rank(768, 8, 1.0) == 96 and tsv_rank(12, 3, 1.0) == int(12 * (1 / 3)) and tsv_rank(12, 3, 0.5) == 2
    base, models = _models((16, 12), dtype=torch.float64)
    for fraction, k in ((1.0, 4), (0.5, 2)):  # rank 12, 3 tasks
        out = _run("tsv_m", base, models, rank_fraction=fraction)
        assert int((_singular_values(out - base) > 1e-9).sum()) == 3 * k
    small_base, small = _models((2, 8))  # rank 2 < 3 tasks: int(2 / 3) = 0 components, as in fusion_bench
    assert torch.equal(_run("tsv_m", small_base, small), small_base)


def test_weights_scale_each_task_vector_before_the_merge():
    base, models = _models((8, 8), dtype=torch.float64)
    w = [1.0, 0.5, -0.25]
    scaled = [base + wi * (m - base) for wi, m in zip(w, models)]
    for name in SVD_METHODS:
        torch.testing.assert_close(_run(name, base, models, w), _run(name, base, scaled), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", SVD_METHODS)
def test_other_tensors_and_excluded_keys_take_the_mean_task_vector(name):
    for shape in [(7,), (2, 3, 2), ()]:
        base, models = _models(shape)
        mean = sum(m.double() - base.double() for m in models) / 3
        out = _run(name, base, models, scaling=0.5)
        torch.testing.assert_close(out.double(), base.double() + 0.5 * mean, atol=1e-6, rtol=0)
    base, models = _models((8, 6))
    mean = sum(m - base for m in models) / 3
    excluded = _run(name, base, models, key="text_projection.weight", exclude_keys=["text_projection.*"])
    torch.testing.assert_close(excluded, base + mean, atol=1e-6, rtol=0)
    assert (
        _run(name, base, models, key="other.weight", exclude_keys=["text_projection.*"]) - excluded
    ).abs().max() > 1e-3


@pytest.mark.parametrize("name", SVD_METHODS)
def test_half_precision_in_float32_out_in_the_input_dtype(name):
    base, models = _models((8, 6), dtype=torch.float16)
    out = _run(name, base, models)
    assert out.dtype == torch.float16
    ref = _run(name, base.float(), [m.float() for m in models])
    torch.testing.assert_close(out, ref.half(), atol=0, rtol=0)


def test_lazy_task_vectors_equal_a_list_and_nothing_is_modified():
    base, models = _models((8, 6))
    w = [1.0, 0.5, 2.0]
    taus = [(m - base) * wi for m, wi in zip(models, w)]
    copies = [t.clone() for t in taus] + [m.clone() for m in models]
    lazy = LazyTaskVectors(base, models, w)
    merges = (iso_c_delta, mean_delta, lambda t: iso_cts_delta(t, 0.5), lambda t: tsv_m_delta(t, 1.0))
    for merge in merges:
        assert torch.equal(merge(taus), merge(lazy))
    assert all(torch.equal(a, b) for a, b in zip(taus + models, copies))


def test_orthonormal_factor_is_the_nearest_orthonormal_matrix():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(9, 4, generator=g, dtype=torch.float64)
    w = orthonormal_factor(a)
    torch.testing.assert_close(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    q, _ = torch.linalg.qr(a)  # another orthonormal basis of the same columns is further from a
    assert (w - a).norm() <= (q - a).norm()


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("iso_c", {"scaling": "big"}, "scaling"),
        ("iso_c", {"scaling": 1e9}, "scaling"),
        ("iso_c", {"exclude_keys": "text_projection"}, "exclude_keys"),
        ("iso_c", {"common_space_fraction": 0.5}, "common_space_fraction: unknown field"),
        ("iso_cts", {"common_space_fraction": 1.5}, "common_space_fraction"),
        ("iso_cts", {"common_space_fraction": -0.1}, "common_space_fraction"),
        ("tsv_m", {"rank_fraction": 0.0}, "rank_fraction"),
        ("tsv_m", {"rank_fraction": 2}, "rank_fraction"),
        ("tsv_m", {"alpha": 1.0}, "alpha: unknown field"),
    ],
)
def test_parameter_errors_are_one_line(name, params, field):
    with pytest.raises(PaintError, match=field) as e:
        M.get_method(name).parse_params(params)
    assert "\n" not in str(e.value) and f"method {name!r}" in str(e.value)


def test_registry_entries_take_whole_tensors_and_cite_their_papers():
    for name in SVD_METHODS:
        m = M.METHODS[name]
        assert m.whole_tensor and m.uses_weights and m.uses_base and m.prepare is None and m.min_models == 1
    assert M.METHODS["iso_c"].papers[0].arxiv == M.METHODS["iso_cts"].papers[0].arxiv == "2502.04959"
    assert M.METHODS["tsv_m"].papers[0].arxiv == "2412.00081"
    assert not any(m.whole_tensor for n, m in M.METHODS.items() if n not in SVD_METHODS)
    defaults = {n: M.get_method(n).parse_params({}).model_dump() for n in SVD_METHODS}
    assert defaults == {  # fusion_bench's defaults
        "iso_c": {"scaling": 1.0, "exclude_keys": []},
        "iso_cts": {"scaling": 1.0, "exclude_keys": [], "common_space_fraction": 0.8},
        "tsv_m": {"scaling": 1.0, "rank_fraction": 1.0, "exclude_keys": []},
    }


# ---------------------------------------------------------------------------- paint merge end to end


@pytest.fixture(scope="module")
def finetuned(tiny_clip_dir, tmp_path_factory):
    """Two "fine-tuned" weight-only variants of the tiny CLIP."""
    root = tmp_path_factory.mktemp("svd-merge")
    sd = io.load_state_dict(tiny_clip_dir)
    for i in (1, 2):
        g = torch.Generator().manual_seed(i)
        noisy = {k: v + 0.02 * torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
                 for k, v in sd.items()}  # fmt: skip
        writer.save_state_dict(noisy, root / f"ft{i}", max_shard_bytes=200_000 if i == 2 else "2GB")
    return root


@pytest.mark.parametrize(
    "name,params",
    [("iso_c", {"scaling": 0.9}), ("iso_cts", {"common_space_fraction": 0.5}), ("tsv_m", {"scaling": 1.1})],
)
def test_cli_merge_with_each_svd_method(tiny_clip_dir, finetuned, tmp_path, capsys, name, params):
    from transformers import CLIPModel

    out = tmp_path / "merged"
    cfg = {
        "base": str(tiny_clip_dir),
        "models": [{"path": str(finetuned / "ft1")}, {"path": str(finetuned / "ft2"), "weight": 0.8}],
        "method": name,
        "parameters": params,
        "output": str(out),
        "chunk_size": 1000,  # would cut most tensors into row chunks; these methods take them whole
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--no-progress"]) == 0
    assert f"with {name} into" in capsys.readouterr().out
    base = io.load_state_dict(tiny_clip_dir)
    expected = merge_state_dicts(
        base,
        [io.load_state_dict(finetuned / f"ft{i}") for i in (1, 2)],
        name,
        weights=[1.0, 0.8],
        params=params,
    )
    got = CLIPModel.from_pretrained(out).state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert not torch.equal(got["vision_model.encoder.layers.0.mlp.fc1.weight"],
                           base["vision_model.encoder.layers.0.mlp.fc1.weight"])  # fmt: skip
    card = (out / "README.md").read_text()
    assert M.METHODS[name].papers[0].arxiv in card and f"# Merged model ({name})" in card
    resolved = yaml.safe_load((out / CONFIG_NAME).read_text())["parameters"]
    assert resolved == M.get_method(name).parse_params(params).model_dump(mode="json")
    assert json.loads((out / "merge_summary.json").read_text())["method"] == name


def test_cli_merge_refuses_bad_svd_parameters_in_one_line(tiny_clip_dir, finetuned, tmp_path, capsys):
    path = tmp_path / "merge.yaml"
    for method, params in (("iso_cts", {"common_space_fraction": 2}), ("tsv_m", {"rank_fraction": 0})):
        cfg = {"base": str(tiny_clip_dir), "models": [{"path": str(finetuned / "ft1")}], "method": method,
               "parameters": params, "output": str(tmp_path / "out")}  # fmt: skip
        path.write_text(yaml.safe_dump(cfg))
        assert main(["merge", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("paint merge: error:") and err.count("\n") == 1 and next(iter(params)) in err, err
    assert not (tmp_path / "out").exists()


def test_run_merge_validates_svd_parameters_before_reading(tiny_clip_dir, finetuned, tmp_path):
    cfg = MergeConfig(base=str(tiny_clip_dir), models=[{"path": str(finetuned / "ft1")}], method="iso_c",
                      parameters={"exclude_keys": [1, 2]}, output=str(tmp_path / "o"))  # fmt: skip
    with pytest.raises(PaintError, match="exclude_keys"):
        run_merge(cfg, progress=False)


def test_orthonormal_factor_retries_in_double_when_the_svd_does_not_converge(monkeypatch):
    """LAPACK's SVD can fail on repeated singular values (seen with Iso-CTS on identical task vectors)."""
    from paint.weights import subspace

    real, calls = torch.linalg.svd, []

    def flaky(a, full_matrices=True):
        calls.append(a.dtype)
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(a, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    a = torch.randn(6, 4)
    q = subspace.orthonormal_factor(a)
    assert calls == [torch.float32, torch.float64] and q.dtype == torch.float32
    torch.testing.assert_close(q.T @ q, torch.eye(4), atol=1e-5, rtol=0)
