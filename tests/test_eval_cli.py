"""paint eval on a user's data (every task spec form), its metrics; tasks show; Ctrl-C and flag hints."""

import json

import numpy as np
import pytest
import torch
import yaml

from paint.cli import main
from paint.evaluation.classification import classification_report
from tests.test_cli import _bad, _folder

TEMPLATE = "a photo of the {}."


def test_classification_report_counts_topk_per_class_and_confusions():
    # 3 classes; rows are samples. Class 0: 2/2 right. Class 1: 1 of 3 right, 2 taken for class 2.
    # Class 2: 0 of 1 right (taken for 0), but class 2 is its second choice (top-2 hit).
    logits = torch.tensor(
        [
            [3.0, 1, 0],
            [3.0, 0, 1],
            [0, 3.0, 1],
            [0, 1, 3.0],
            [1, 0, 3.0],
            [3.0, 0, 2],
        ]
    )
    labels = [0, 0, 1, 1, 1, 2]
    r = classification_report(logits, labels, ["cat", "dog", "red"], k=2)
    assert r["n"] == 6 and r["top1"] == pytest.approx(3 / 6)
    assert r["top5_k"] == 2 and r["top5"] == pytest.approx(5 / 6)  # sample 4: dog ranked third
    assert r["per_class"]["cat"] == {"accuracy": 1.0, "n": 2}
    assert r["per_class"]["dog"]["accuracy"] == pytest.approx(1 / 3)
    assert r["per_class"]["red"] == {"accuracy": 0.0, "n": 1}
    assert r["most_confused"][0] == {
        "true": "dog",
        "predicted": "red",
        "count": 2,
        "fraction_of_true": pytest.approx(2 / 3),
    }
    assert r["most_confused"][1]["true"] == "red" and r["most_confused"][1]["predicted"] == "cat"
    assert len(r["most_confused"]) == 2  # no empty cells listed


def _pets(tmp_path):
    return _folder(tmp_path / "pets", {"cat": 15, "dog": 15})


def test_eval_on_a_folder_writes_json_beside_the_table(tiny_clip_dir, tmp_path, capsys):
    pets = _pets(tmp_path)
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        str(tiny_clip_dir),
        "--task",
        str(pets),
        "--template",
        TEMPLATE,
        "--split",
        "train",
        "--limit",
        "10",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "eval.json").read_text())
    r = report["results"]["pets"]
    assert r["n"] == 10 and set(r["per_class"]) == {"cat", "dog"}
    assert sum(v["n"] for v in r["per_class"].values()) == 10
    assert r["top5_k"] == 2 and r["top5"] == 1.0  # with two classes the top-2 always holds the answer
    assert 0.0 <= r["top1"] <= 1.0
    assert report["tasks"]["pets"]["source"] == "folder"
    assert "| pets |" in captured.out and (out / "eval.md").read_text().count("| pets |") == 1
    assert "threads: 1 (set;" in captured.err


def test_eval_task_spec_forms_name_the_same_data(tiny_clip_dir, tmp_path, capsys):
    pets = _pets(tmp_path)
    csv = tmp_path / "pets.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted(pets.rglob("*.png"))]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    spec_file = tmp_path / "task.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "from-file", "source": "folder", "path": str(pets)}))
    inline = json.dumps({"name": "inline", "source": "folder", "path": str(pets), "templates": [TEMPLATE]})
    report = tmp_path / "r.json"
    argv = [
        "eval",
        "--model",
        str(tiny_clip_dir),
        "--task",
        str(csv),
        "--task",
        str(spec_file),
        "--task",
        inline,
        "--template",
        TEMPLATE,
        "--classnames",
        "cat,dog",
        "--split",
        "train",
        "--json",
        str(report),
    ]
    assert main(argv) == 0
    results = json.loads(report.read_text())["results"]
    assert list(results) == ["pets", "from-file", "inline"]
    # The same images and names by three routes: the same predictions.
    assert results["pets"]["n"] == results["from-file"]["n"] == results["inline"]["n"] > 0
    assert (
        results["pets"]["top1"]
        == pytest.approx(results["from-file"]["top1"])
        == pytest.approx(results["inline"]["top1"])
    )


def test_eval_bad_task_values_are_one_line(tiny_clip_dir, tmp_path, capsys):
    base = ["eval", "--model", str(tiny_clip_dir)]
    _bad(capsys, base + ["--task", "no-such-thing"], "is not a built-in")
    _bad(
        capsys, base + ["--task", "mnist", "--root", str(tmp_path)], f"catalog task 'mnist' not found under {tmp_path}"
    )
    _bad(capsys, base + ["--task", "{name: x, source: folder}"], "needs a path")
    _bad(capsys, base + ["--task", "digits", "--template", "no placeholder"], "--template needs a {}")
    _bad(capsys, base + ["--task", "digits", "--classnames", "a,b"], "2 class names given")


def test_tasks_show_a_builtin(capsys):
    assert main(["tasks", "show", "digits"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits: ") and "classes (10): zero, one," in out and "paint eval --task digits" in out
    assert main(["tasks", "show", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_classes"] == 10


def _interrupt(args):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("command", "module", "argv", "resume"),
    [
        ("patch", "paint.commands.patch", ["patch", "x.yaml"], True),
        ("eval", "paint.commands.evaluate", ["eval", "--task", "digits"], False),
        (
            "interpolate",
            "paint.commands.interpolate",
            ["interpolate", "--finetuned", "f", "--alpha", "0.5", "--out", "o"],
            False,
        ),
    ],
)
def test_ctrl_c_suggests_resume_only_where_the_command_has_it(monkeypatch, capsys, command, module, argv, resume):
    import importlib

    monkeypatch.setattr(importlib.import_module(module), "run", _interrupt)
    assert main(argv + ["--threads", "1"]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"paint {command}: interrupted")
    assert ("--resume" in err) is resume


def test_extrapolation_hint_names_the_flag(tiny_clip_dir, tiny_clip_dir_b, tmp_path, capsys):
    argv = [
        "interpolate",
        "--zeroshot",
        str(tiny_clip_dir),
        "--finetuned",
        str(tiny_clip_dir_b),
        "--alpha",
        "1.5",
        "--out",
        str(tmp_path / "o"),
    ]
    _bad(capsys, argv, "alpha 1.5 is outside [0, 1]; pass --allow-extrapolation to extrapolate")
    assert main(argv + ["--allow-extrapolation"]) == 0


def test_limit_takes_a_random_subset_not_the_first_class():
    from paint.commands.evaluate import _subset
    from paint.data.builtin import digits_task

    task, _ = digits_task(0.1, 5000, 0)
    split = task.split("train")
    sub = _subset(split, 40)
    assert len(sub) == 40 and len(np.unique(sub.labels)) > 1


def test_cli_message_names_flags_only_where_the_command_has_them():
    from argparse import Namespace

    from paint.cli import cli_message

    merge_msg = "output out exists and is not empty; set overwrite: true or choose another directory"
    assert cli_message(merge_msg, Namespace(overwrite=False)) == (
        "output out exists and is not empty; pass --overwrite or choose another directory"
    )
    assert cli_message(merge_msg, Namespace()) == merge_msg  # the Python API's wording where there is no flag
    sweep_msg = "config.yaml: sweep.alphas: Value error, alpha 1.5 is outside [0, 1]; set sweep.allow_extrapolation: true to extrapolate"
    assert cli_message(sweep_msg, Namespace(set=[])).endswith(
        "set sweep.allow_extrapolation: true (or --set sweep.allow_extrapolation=true) to extrapolate"
    )


def test_task_values_resolve_to_the_spec_a_config_would_hold(tmp_path, monkeypatch):
    from paint.commands._shared import task_specs

    root = tmp_path / "data"
    for f in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (root / "mnist").mkdir(parents=True, exist_ok=True)
        (root / "mnist" / f).write_bytes(b"")
    (spec,) = task_specs("MNIST", str(root))  # catalog names are case-insensitive
    assert (spec.name, spec.source, spec.path) == ("mnist", "catalog", str(root / "mnist"))
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path / "digits", {"a": 1})  # a folder named like a built-in does not shadow it ...
    assert task_specs("digits")[0].source == "builtin"
    assert task_specs("./digits")[0].source == "folder"  # ... unless it is written as a path
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"patch_tasks": ["digits"], "support_tasks": ["shapes", {"name": "p", "source": "csv", "path": "x.csv"}]}
        )
    )
    assert [(s.name, s.source) for s in task_specs(str(cfg))] == [
        ("digits", "builtin"),
        ("shapes", "builtin"),
        ("p", "csv"),
    ]
    assert task_specs("hf:user/pets")[0].model_dump(include={"name", "source", "path"}) == {
        "name": "pets",
        "source": "hf",
        "path": "user/pets",
    }
