"""Per-block interpolation and per-block task arithmetic (pure state-dict maths)."""

from __future__ import annotations

import pytest
import torch

from paint.errors import PaintError
from paint.weights.blocks import (
    add_block_task_vectors,
    block_depths,
    block_names,
    block_of,
    interpolate_blocks,
    linear_alphas,
    uniform_alphas,
)
from paint.weights.ops import add_task_vectors, interpolate, task_vector


@pytest.fixture(scope="module")
def towers(tiny_clip_dir):
    """The tiny CLIP's image tower (2 layers) and two perturbed copies."""
    from transformers import CLIPModel

    from paint.types import is_image_tower_key

    sd = {
        k: v.clone() for k, v in CLIPModel.from_pretrained(tiny_clip_dir).state_dict().items() if is_image_tower_key(k)
    }
    g = torch.Generator().manual_seed(0)
    ft = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()} for _ in range(2)]
    return sd, ft


def test_blocks_are_derived_from_parameter_names(towers):
    sd, _ = towers
    assert block_names(sd) == ["embeddings", "layer.0", "layer.1", "head"]
    assert block_of("vision_model.embeddings.patch_embedding.weight") == "embeddings"
    assert block_of("vision_model.pre_layrnorm.bias") == "embeddings"
    assert block_of("vision_model.encoder.layers.11.mlp.fc1.weight") == "layer.11"
    assert block_of("vision_model.post_layernorm.weight") == "head"
    assert block_of("visual_projection.weight") == "head"
    assert block_depths(["embeddings", "layer.0", "head"]) == {"embeddings": 0.0, "layer.0": 0.5, "head": 1.0}


def test_a_tower_with_a_missing_layer_is_refused(towers):
    sd, _ = towers
    gap = {k: v for k, v in sd.items() if ".layers.0." not in k}
    with pytest.raises(PaintError, match="no tensors for layer 0"):
        block_names(gap)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_equal_block_alphas_equal_interpolate_bit_exactly(towers, alpha):
    sd, ft = towers
    ref = interpolate(sd, ft[0], alpha)
    out = interpolate_blocks(sd, ft[0], uniform_alphas(block_names(sd), alpha))
    assert set(out) == set(ref)
    for k in ref:
        assert torch.equal(out[k], ref[k]), k


def test_each_block_gets_its_own_alpha(towers):
    sd, ft = towers
    alphas = {"embeddings": 0.0, "layer.0": 0.25, "layer.1": 0.5, "head": 1.0}
    out = interpolate_blocks(sd, ft[0], alphas)
    for k in sd:
        want = interpolate({k: sd[k]}, {k: ft[0][k]}, alphas[block_of(k)])[k]
        assert torch.equal(out[k], want), k
    assert torch.equal(out["visual_projection.weight"], ft[0]["visual_projection.weight"])
    assert torch.equal(out["vision_model.embeddings.class_embedding"], sd["vision_model.embeddings.class_embedding"])


def test_linear_alphas_follow_depth(towers):
    sd, _ = towers
    a = linear_alphas(block_names(sd), 0.1, 0.7)
    assert a == pytest.approx({"embeddings": 0.1, "layer.0": 0.3, "layer.1": 0.5, "head": 0.7})


def test_block_alphas_are_checked(towers):
    sd, ft = towers
    with pytest.raises(PaintError, match="no coefficient for block 'layer.1'"):
        interpolate_blocks(sd, ft[0], {"embeddings": 0.1, "layer.0": 0.1, "head": 0.1})
    with pytest.raises(PaintError, match="alpha 1.5 of block 'head' is outside"):
        interpolate_blocks(sd, ft[0], {**uniform_alphas(block_names(sd), 0.5), "head": 1.5})
    with pytest.raises(PaintError, match="block 'layer.7', which the image tower does not have"):
        interpolate_blocks(sd, ft[0], {**uniform_alphas(block_names(sd), 0.5), "layer.7": 0.5})


def test_block_task_arithmetic_equals_the_formula(towers):
    sd, ft = towers
    taus = [task_vector(sd, t) for t in ft]
    blocks = block_names(sd)
    # Equal coefficients per block: bit for bit the scalar task arithmetic.
    same = add_block_task_vectors(sd, taus, [uniform_alphas(blocks, 0.3), uniform_alphas(blocks, 0.6)])
    ref = add_task_vectors(sd, taus, [0.3, 0.6])
    assert all(torch.equal(same[k], ref[k]) for k in ref)
    # Different coefficients: base + sum_i c_i[block] * tau_i, tensor by tensor.
    coeffs = [linear_alphas(blocks, 0.0, 1.0), linear_alphas(blocks, 0.8, 0.2)]
    out = add_block_task_vectors(sd, taus, coeffs)
    for k in sd:
        want = sd[k] + sum(c[block_of(k)] * tau[k] for c, tau in zip(coeffs, taus))
        torch.testing.assert_close(out[k], want, rtol=0, atol=1e-6)
    with pytest.raises(PaintError, match="2 task vectors but 1 coefficient vectors"):
        add_block_task_vectors(sd, taus, coeffs[:1])


@pytest.fixture(scope="module")
def merge_dirs(tiny_clip_dir, tmp_path_factory):
    """The tiny CLIP as a base directory and two perturbed full checkpoints."""
    from paint.weights import io, writer

    root = tmp_path_factory.mktemp("block-merge")
    sd = io.load_state_dict(tiny_clip_dir)
    for i in (1, 2):
        g = torch.Generator().manual_seed(i)
        ft = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
        writer.save_state_dict(ft, root / f"ft{i}")
    return tiny_clip_dir, root


def test_merge_with_per_block_task_arithmetic_equals_the_per_block_formula(merge_dirs, tmp_path):
    from paint.pipeline.merge import MergeConfig, run_merge
    from paint.types import is_image_tower_key
    from paint.weights import io

    base_dir, root = merge_dirs
    base = io.load_state_dict(base_dir)
    fts = [io.load_state_dict(root / f"ft{i}") for i in (1, 2)]
    blocks = block_names(k for k in base if is_image_tower_key(k))
    coeffs = [linear_alphas(blocks, 0.1, 0.9), linear_alphas(blocks, 0.6, 0.2)]
    cfg = MergeConfig(
        base=str(base_dir),
        models=[
            {"path": str(root / "ft1"), "weight": 0.3, "block_weights": coeffs[0]},
            {"path": str(root / "ft2"), "weight": 0.4, "block_weights": coeffs[1]},
        ],
        method="task_arithmetic",
        output=str(tmp_path / "out"),
        chunk_size=2000,  # several row chunks per large tensor
        hash_inputs=False,
    )
    run_merge(cfg, progress=False)
    got = io.load_state_dict(tmp_path / "out")
    tower = [k for k in base if is_image_tower_key(k) and base[k].is_floating_point()]
    taus = [{k: ft[k] - base[k] for k in tower} for ft in fts]
    want = add_block_task_vectors({k: base[k] for k in tower}, taus, coeffs)
    for k in tower:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    text = next(k for k in base if k.startswith("text_model.") and base[k].is_floating_point())
    torch.testing.assert_close(
        got[text], base[text] + 0.3 * (fts[0][text] - base[text]) + 0.4 * (fts[1][text] - base[text]), rtol=0, atol=1e-6
    )


def test_merge_block_weights_are_checked_before_any_data(merge_dirs, tmp_path):
    from paint.pipeline.merge import MergeConfig, run_merge

    base_dir, root = merge_dirs
    good = uniform_alphas(["embeddings", "layer.0", "layer.1", "head"], 0.5)

    def cfg(method="task_arithmetic", bw=good):
        return MergeConfig(
            base=str(base_dir),
            models=[{"path": str(root / "ft1"), "block_weights": bw}],
            method=method,
            output=str(tmp_path / "out"),
        )

    with pytest.raises(PaintError, match="block_weights\\) need method 'task_arithmetic', not 'ties'"):
        run_merge(cfg("ties"), progress=False)
    with pytest.raises(PaintError, match="block_weights has no coefficient for block 'head'"):
        run_merge(cfg(bw={b: a for b, a in good.items() if b != "head"}), progress=False)
    with pytest.raises(PaintError, match="block_weights has unknown block 'layer.5'"):
        run_merge(cfg(bw={**good, "layer.5": 0.1}), progress=False)
    assert not (tmp_path / "out").exists()
