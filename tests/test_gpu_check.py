"""The GPU check's Python pieces run on a CPU (so a GPU's first run is not spent on bugs), and its DDP verdict can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_finetune  # noqa: E402
import ddp_check  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_finetune_tiny_dry_run_times_every_variant_with_paint_using_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINT_PROGRESS", "0")
    out = tmp_path / "b.json"
    argv = ["--arch", "tiny", "--precision", "fp32,bf16-ckpt", "--batch", "4", "--steps", "1", "--repeats", "1"]
    res = bench_finetune.main(argv + ["--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    rows = res["variants"]
    assert list(rows) == ["fp32", "bf16-ckpt"]
    assert [rows[v]["runtime"]["mixed_precision"] for v in rows] == ["no", "bf16"]
    assert [rows[v]["runtime"]["gradient_checkpointing"] for v in rows] == [False, True]
    for v, row in rows.items():
        assert len(row["finetune"]["paint"]) == 1 and row["finetune"]["paint"][0] > 0, v
        assert all(torch.isfinite(torch.tensor(x)) for x in row["final_loss"].values()), v
    assert "eval" in rows["fp32"] and "eval" not in rows["bf16-ckpt"]  # eval is timed for fp32 and bf16 only


def test_bench_finetune_refuses_an_unknown_variant(capsys):
    with pytest.raises(SystemExit):
        bench_finetune.main(["--arch", "tiny", "--precision", "fp8"])
    assert "unknown --precision variant 'fp8'" in capsys.readouterr().err


def _runs(tmp_path: Path, shift2: float, rank1_shift: float = 0.0) -> tuple[Path, Path]:
    """Fake 1- and 2-process outputs: theta_zs, a trained tower, the 2-process one off by ``shift2``."""
    zs = {"vision_model.w": torch.zeros(100)}
    trained = {"vision_model.w": torch.linspace(-1, 1, 100)}
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    p1.mkdir(parents=True), p2.mkdir()
    save_file(zs, str(p1 / "zs.safetensors"))
    save_file(trained, str(p1 / "rank0.safetensors"))
    save_file({"vision_model.w": trained["vision_model.w"] + shift2}, str(p2 / "rank0.safetensors"))
    save_file({"vision_model.w": trained["vision_model.w"] + shift2 + rank1_shift}, str(p2 / "rank1.safetensors"))
    return p1, p2


def test_ddp_compare_passes_a_match_and_fails_each_kind_of_mismatch(tmp_path):
    one = {"steps": 4, "losses": [2.0, 1.5]}
    p1, p2 = _runs(tmp_path / "same", 1e-5)
    assert ddp_check.compare(one, {"steps": 4, "losses": [2.0, 1.50001]}, p1, p2, "no", weights=True)["ok"]
    # losses apart
    assert not ddp_check.compare(one, {"steps": 4, "losses": [2.0, 1.6]}, p1, p2, "no", weights=True)["ok"]
    # a different number of steps
    assert not ddp_check.compare(one, {"steps": 3, "losses": [2.0, 1.5]}, p1, p2, "no", weights=False)["ok"]
    # weights apart: ||gap|| / ||change|| = 0.2 / 5.8 = 3.4%, over fp32's 1% and within bf16's 5%
    p1, p2 = _runs(tmp_path / "far", 0.02)
    assert not ddp_check.compare(one, one, p1, p2, "no", weights=True)["ok"]
    assert ddp_check.compare(one, one, p1, p2, "bf16", weights=True)["ok"]
    # the two DDP ranks ended differently
    p1, p2 = _runs(tmp_path / "ranks", 0.0, rank1_shift=1e-6)
    r = ddp_check.compare(one, one, p1, p2, "no", weights=True)
    assert not r["ok"] and r["ranks_identical"] is False


def test_gpu_check_script_parses_and_refuses_unknown_arguments():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr
