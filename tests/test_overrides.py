"""--set overrides, --threads and the warnings and hints of config commands, through the CLI in-process."""

import re

import pytest
import yaml

from paint.cli import main
from paint.config import apply_overrides, parse_config
from paint.errors import PaintError
from paint.pipeline.patch import PatchConfig
from tests.test_cli import _bad, _config


def test_apply_overrides_sets_nested_values_parsed_as_yaml():
    data = {"output_dir": "a", "patch_tasks": ["digits"], "finetune": {"epochs": 5, "lr": 0.1}}
    out = apply_overrides(
        PatchConfig,
        data,
        [
            "finetune.epochs=2",
            "output_dir=/tmp/x",
            "selection.alphas=[0.25, 0.5]",
            "support_tasks=[shapes, colours]",
            "selection.objective=mean_accuracy",
        ],
    )
    assert out["finetune"] == {"epochs": 2, "lr": 0.1}  # the other nested values stay
    assert out["output_dir"] == "/tmp/x" and out["selection"] == {"alphas": [0.25, 0.5], "objective": "mean_accuracy"}
    cfg = parse_config(PatchConfig, out)
    assert [t.name for t in cfg.support_tasks] == ["shapes", "colours"] and cfg.selection.objective == "mean_accuracy"
    assert data["finetune"]["epochs"] == 5  # the input mapping is not changed


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("finetune.epoch=2", "--set finetune.epoch: unknown key 'epoch' in finetune (known: augment"),
        ("learning_rate=0.1", "unknown key 'learning_rate' in the config"),
        ("finetune", "expected KEY=VALUE"),
        ("output_dir.x=1", "output_dir has no sub-keys"),
    ],
)
def test_bad_override_is_one_line_naming_the_key(item, message):
    with pytest.raises(PaintError, match=re.escape(message)):
        apply_overrides(PatchConfig, {"output_dir": "a", "patch_tasks": ["digits"]}, [item])


def test_patch_overrides_threads_and_warning_recorded(tiny_clip_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_clip_dir)
    out = tmp_path / "elsewhere"
    argv = [
        "patch",
        str(cfg),
        "--set",
        "finetune.max_steps=1",
        "--set",
        f"output_dir={out}",
        "--set",
        "selection.alphas=[0.5]",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["finetune"]["max_steps"] == 1 and resolved["output_dir"] == str(out) and resolved["threads"] == 1
    assert resolved["selection"]["alphas"] == [0.5]
    assert not (tmp_path / "run").exists()  # the config's own output_dir was overridden
    assert [line for line in err.splitlines() if line.startswith("threads:")] == [
        "threads: 1 (set; choose with --threads N or threads: in the config)"
    ]
    assert err.count("warning: no support_tasks") == 1 and "support_tasks=[shapes, colours]" in err
    # Progress off a terminal (pytest captures stderr) is whole lines, never carriage-return bars.
    assert "\r" not in err


def test_override_errors_through_the_cli(tiny_clip_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_clip_dir)
    _bad(capsys, ["patch", str(cfg), "--set", "finetune.epoch=2"], "unknown key 'epoch' in finetune")
    _bad(capsys, ["patch", str(cfg), "--set", "finetune.epochs=many"], "finetune.epochs")
    _bad(capsys, ["patch", str(cfg), "--threads", "lots"], "threads must be 'auto' or an integer from 1 to 4096")
    # A config-file remedy gets its --set form beside it on commands that take --set.
    _bad(capsys, ["patch", str(cfg), "--set", "selection.alphas=[1.5]"], "--set selection.allow_extrapolation=true")
    assert not (tmp_path / "run").exists()


def test_threads_in_the_config_file_apply(tiny_clip_dir, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        cfg = _config(
            tmp_path,
            tiny_clip_dir,
            threads=1,
            finetune={"epochs": 1, "max_steps": 1, "batch_size": 64},
            selection={"alphas": [0.0, 1.0]},
        )
        torch.set_num_threads(2)
        assert main(["patch", str(cfg)]) == 0
        assert torch.get_num_threads() == 1
        assert "threads: 1 (set;" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
