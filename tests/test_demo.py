"""paint demo with a reduced budget: it finishes, and its report and checkpoint parse."""

import json

import pytest

from paint.models.clip import default_model_path

pytestmark = pytest.mark.skipif(
    not (default_model_path() / "model.safetensors").is_file(), reason="the default model is not shipped"
)


def test_quick_demo_runs_end_to_end(tmp_path):
    from transformers import CLIPModel, pipeline

    from paint.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patch_tasks"] == ["digits"]
    assert set(summary["support_tasks"]) == {"shapes", "colours", "rendered-digits", "backgrounds"}
    assert summary["alpha"] in {p["alpha"] for p in summary["sweep"]}
    for task, r in summary["test"].items():
        assert r["role"] == ("patch" if task == "digits" else "support")
        assert all(0.0 <= r[k] <= 1.0 for k in ("zeroshot", "finetuned", "patched"))
    assert "chosen alpha" in (out / "summary.md").read_text()
    assert (out / "tradeoff.png").stat().st_size > 1000
    assert "pipeline_tag: zero-shot-image-classification" in (out / "model" / "README.md").read_text()
    CLIPModel.from_pretrained(out / "model")
    pipe = pipeline("zero-shot-image-classification", model=str(out / "model"), device="cpu")
    from paint.world.tasks import world_task

    img = world_task("shapes").split("test").image(0)
    scores = pipe(img, candidate_labels=["circle", "square", "triangle"], hypothesis_template="a photo of a {}.")
    assert abs(sum(s["score"] for s in scores) - 1.0) < 1e-4
