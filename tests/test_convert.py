"""OpenAI CLIP / open_clip -> transformers CLIPModel, checked numerically against a reference model.

The source side is a small CLIP written here in plain torch from the published
architecture (OpenAI's ``clip/model.py`` layout and parameter names); open_clip is never
imported.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from paint.cli import main
from paint.errors import PaintError
from paint.models.convert import convert_checkpoint, convert_clip_state_dict
from paint.weights import io, writer


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, B, D)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid**2, width)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, grid**2 + 1, width)
        x = self.ln_pre(x).permute(1, 0, 2)  # (L, B, D)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj  # (B, out_dim)


class OpenAIStyleCLIP(nn.Module):
    def __init__(self, embed_dim, image, patch, v_width, v_layers, v_heads, ctx, vocab, t_width, t_layers, t_heads):
        super().__init__()
        self.context_length = ctx
        self.visual = VisionTransformer(image, patch, v_width, v_layers, v_heads, embed_dim)
        mask = torch.empty(ctx, ctx).fill_(float("-inf")).triu_(1)  # causal: attend to self and earlier
        self.transformer = Transformer(t_width, t_layers, t_heads, attn_mask=mask)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.empty(ctx, t_width))
        self.ln_final = nn.LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.empty(t_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding  # (B, ctx, D)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection  # pooled at <end>


VOCAB, CTX = 50, 12


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    # widths of 128 and 64 keep OpenAI's 64-wide heads, so the default head rule applies
    model = OpenAIStyleCLIP(32, image=32, patch=8, v_width=128, v_layers=2, v_heads=2, ctx=CTX, vocab=VOCAB,
                            t_width=64, t_layers=2, t_heads=1).eval()  # fmt: skip
    with torch.no_grad():  # every tensor random, LayerNorm scales near 1: a swapped name cannot hide
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            is_ln_scale = ".ln_" in f".{name}" and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if is_ln_scale else 0.0))
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(1, VOCAB - 2, (3, CTX), generator=g)
    for row, end in enumerate((4, 7, CTX - 1)):
        ids[row, 0], ids[row, end], ids[row, end + 1 :] = VOCAB - 2, VOCAB - 1, 0  # <start> ... <end> pad
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(ids)
    return model, images, ids, img, txt


def _hf_features(out_dir, images, ids):
    from transformers import CLIPModel

    from paint.models.clip import image_features, text_features

    hf = CLIPModel.from_pretrained(out_dir).eval()
    with torch.no_grad():
        return hf, image_features(hf, images), text_features(hf, ids, torch.ones_like(ids))


def test_openai_state_dict_converts_to_same_features(reference, tmp_path):
    model, images, ids, img, txt = reference
    src = tmp_path / "ViT-tiny.pt"
    torch.save(model.state_dict(), src)
    summary = convert_checkpoint(src, tmp_path / "hf")
    assert summary["format"] == "openai"
    assert (summary["vision_heads"], summary["text_heads"], summary["image_size"], summary["patch_size"]) == (
        2,
        1,
        32,
        8,
    )
    hf, hf_img, hf_txt = _hf_features(tmp_path / "hf", images, ids)
    torch.testing.assert_close(hf_img, img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_txt, txt, atol=1e-5, rtol=1e-5)
    assert hf.logit_scale.item() == pytest.approx(model.logit_scale.item())


def test_open_clip_checkpoint_with_prefix_and_wrapper(reference, tmp_path):
    model, images, ids, img, txt = reference
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 5, "name": "tiny", "state_dict": sd}, tmp_path / "epoch_5.pt")
    assert main(["convert", str(tmp_path / "epoch_5.pt"), str(tmp_path / "hf"), "--format", "auto"]) == 0
    _, hf_img, hf_txt = _hf_features(tmp_path / "hf", images, ids)
    torch.testing.assert_close(hf_img, img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_txt, txt, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "hf" / "conversion.json").is_file()


def test_safetensors_source_and_errors(reference, tmp_path, capsys):
    model = reference[0]
    sd = model.state_dict()
    writer.save_state_dict(sd, tmp_path / "src.safetensors")
    converted, config, fmt = convert_clip_state_dict(io.load_state_dict(tmp_path / "src.safetensors"))
    assert fmt == "openai" and config.vision_config.num_hidden_layers == 2 and len(converted) > len(sd)
    with pytest.raises(PaintError, match="cannot convert tensor 'visual.transformer.resblocks.0.ls_1.gamma'"):
        convert_clip_state_dict({**sd, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(128)})
    with pytest.raises(PaintError, match="not divisible by 3 heads"):
        convert_clip_state_dict(sd, vision_heads=3)
    with pytest.raises(PaintError, match="'text_projection' is missing"):
        convert_clip_state_dict({k: v for k, v in sd.items() if k != "text_projection"})
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_convert_without_tokenizer_writes_openai_preprocessing_and_says_what_is_missing(reference, tmp_path, capsys):
    from paint.models.clip import load_clip, pil_image_processor_class

    torch.save(reference[0].state_dict(), tmp_path / "ViT-tiny.pt")
    out = tmp_path / "hf"
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "ViT-tiny.pt"), str(out)]) == 0
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("threads:")]
    assert len(err) == 1 and "no tokenizer" in err[0] and "--tokenizer-from" in err[0], err
    proc = pil_image_processor_class().from_pretrained(out)  # the image side loads
    assert proc.size == {"shortest_edge": 32} and proc.crop_size == {"height": 32, "width": 32}  # grid 4 x patch 8
    assert int(proc.resample) == 3 and proc.do_center_crop  # bicubic, centre crop
    assert list(proc.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert list(proc.image_std) == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    with pytest.raises(PaintError, match=r"has no tokenizer \(written by `paint convert` without --tokenizer-from\)"):
        load_clip(str(out))


def test_convert_with_tokenizer_from_loads_in_paint(reference, tiny_clip_dir, tmp_path, capsys):
    from paint.models.clip import load_clip

    torch.save(reference[0].state_dict(), tmp_path / "ViT-tiny.pt")
    capsys.readouterr()
    args = ["convert", str(tmp_path / "ViT-tiny.pt"), str(tmp_path / "hf"), "--tokenizer-from", str(tiny_clip_dir)]
    assert main(args) == 0
    assert "no tokenizer" not in capsys.readouterr().err
    bundle = load_clip(str(tmp_path / "hf"))
    assert bundle.tokenizer.get_vocab() == load_clip(str(tiny_clip_dir)).tokenizer.get_vocab()
    assert bundle.spec.crop == 16  # the reference directory's processor, copied over the default
    with pytest.raises(PaintError, match="--tokenizer-from .* has no tokenizer"):
        convert_checkpoint(tmp_path / "ViT-tiny.pt", tmp_path / "hf2", tokenizer_from=tmp_path)
