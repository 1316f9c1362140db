"""Every flag of every config-driven command reaches its config.

For each command that reads a YAML config, every flag its parser advertises is given a valid value
and the command's own ``config(args)`` (what ``run`` calls) builds the validated config: the flag
must change it. A flag that sends a key the config refuses, or that nothing reads, fails here
(``paint counting --rule`` once did both). The flags that are not config fields are listed, each
with what it does instead.
"""

from __future__ import annotations

import argparse
import importlib

import pytest
import torch
import yaml

from paint.cli import build_parser

# Flags that are not config fields: what each does instead.
NOT_CONFIG = {
    "--resume": "continues the run directory (an argument of the run function)",
    "--set": "edits any config field (tested in test_overrides.py)",
    "--out": "pretrain's run directory (an argument of pretrain)",
    "--report": "scale: rewrites the report from finished cells",
    "--no-progress": "merge: hides the progress bar",
    "--help": "argparse's help",
}

# A valid value, different from the default, for every flag a config command has.
VALUES: dict[str, list[str]] = {
    "--output-dir": ["runs/other"],
    "--model": ["paint:tiny"],
    "--heldout": ["3", "7"],
    "--support": ["digits"],
    "--max-train": ["5"],
    "--max-eval": ["5"],
    "--epochs": ["2"],
    "--rule": ["mean"],
    "--constraint": ["each"],
    "--cache-dir": ["elsewhere"],
    "--patch-task": ["backgrounds"],
    "--transfer-task": ["counting"],
    "--train-on": ["attacked"],
    "--seed": ["3"],
    "--font": ["DejaVuSans.ttf"],
    "--font-size": ["0.2"],
    "--colour": ["white"],
    "--position": ["top"],
    "--jitter": ["0.05"],
    "--opacity": ["0.5"],
    "--task": ["digits"],
    "--shots": ["2", "4"],
    "--draws": ["2"],
    "--threshold": ["5"],
    "--max-steps": ["3"],
    "--output": ["merged-elsewhere"],
    "--overwrite": [],
    "--no-race": [],
    "--threads": ["2"],
}

# command words, the module, its config function, the YAML file it is given (None: no file)
COMMANDS = {
    "patch": (["patch"], "paint.commands.patch", "config", {"patch_tasks": [{"name": "digits"}]}),
    "multitask": (
        ["multitask"],
        "paint.commands.multitask",
        "config",
        {"patch_tasks": [{"name": "digits"}, {"name": "counting"}]},
    ),
    "transfer": (
        ["transfer"],
        "paint.commands.transfer",
        "config",
        {"tasks": [{"name": "digits"}, {"name": "counting"}]},
    ),
    "compare": (
        ["compare"],
        "paint.commands.compare",
        "config",
        {"patch_tasks": [{"name": "digits"}], "support_tasks": [{"name": "shapes"}], "recipes": ["frozen-head"]},
    ),
    "scale": (["scale"], "paint.commands.scale", "config", {}),
    "counting": (["counting"], "paint.commands.counting", "config", None),
    "triage": (["triage"], "paint.commands.triage", "config", None),
    "typographic run": (["typographic", "run"], "paint.commands.typographic", "run_config", None),
    "pretrain": (["pretrain"], "paint.commands.pretrain", "config", {}),
    "merge": (
        ["merge"],
        "paint.commands.merge",
        "config",
        {"method": "linear", "base": "z", "models": [{"path": "a", "weight": 0.5}, {"path": "b"}], "output": "m"},
    ),
}


def _leaf_parser(words: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _flags(words: list[str]) -> list[argparse.Action]:
    return [a for a in _leaf_parser(words)._actions if a.option_strings and a.option_strings[-1] not in NOT_CONFIG]


def _cases() -> list[tuple[str, str]]:
    return [(name, a.option_strings[-1]) for name, (words, *_) in COMMANDS.items() for a in _flags(words)]


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _config(name: str, extra: list[str], tmp_path) -> dict:
    words, module, fn, data = COMMANDS[name]
    argv = list(words)
    if data is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        argv.append(str(path))
    if "--output-dir" in {a.option_strings[-1] for a in _flags(words)}:
        argv += ["--output-dir", "runs/base"]
    args = build_parser().parse_args(argv + extra)
    return getattr(importlib.import_module(module), fn)(args).model_dump(mode="json")


@pytest.mark.parametrize(("name", "flag"), _cases(), ids=[f"{n} {f}" for n, f in _cases()])
def test_every_flag_changes_its_commands_config(name, flag, tmp_path, keep_threads):
    assert flag in VALUES, f"{name} {flag}: give it a value in VALUES (or list it in NOT_CONFIG with a reason)"
    base = _config(name, [], tmp_path)
    changed = _config(name, [flag, *VALUES[flag]], tmp_path)
    if flag == "--threads" and "threads" not in base:  # a config without the field: applied to torch at once
        assert torch.get_num_threads() == 2
        return
    assert changed != base, f"paint {name} {flag} did not reach the config"


def test_the_flag_table_covers_every_config_command():
    """Every command whose parser has --set (reads a config) is in COMMANDS, so none is skipped."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    with_set = []
    for name, p in sub.choices.items():
        children = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        leaves = children[0].choices.items() if children else [(None, p)]
        for child, leaf in leaves:
            if any(a.dest == "set" for a in leaf._actions):
                with_set.append(f"{name} {child}" if child else name)
    assert sorted(with_set) == sorted(COMMANDS)
