"""The task catalog (data files) and the ``paint tasks`` command."""

from __future__ import annotations

import json

import pytest

from paint.cli import main
from paint.data.catalog import catalog_entry, describe, list_catalog
from paint.errors import PaintError

EXPECTED = {  # name: (role, number of classes, number of templates)
    "cars": ("patch", 196, 8),
    "dtd": ("patch", 47, 8),
    "eurosat": ("patch", 10, 3),
    "gtsrb": ("patch", 43, 3),
    "kitti": ("patch", 4, 1),
    "mnist": ("patch", 10, 1),
    "resisc45": ("patch", 45, 18),
    "sun397": ("patch", 397, 2),
    "svhn": ("patch", 10, 1),
    "imagenet": ("support", 1000, 80),
    "cifar10": ("support", 10, 18),
    "cifar100": ("support", 100, 18),
    "stl10": ("support", 10, 2),
    "food101": ("support", 101, 1),
    "fashion_mnist": ("transfer", 10, 8),
}


def test_catalog_has_the_papers_tasks_with_roles_and_sizes():
    entries = {e.name: e for e in list_catalog()}
    assert set(EXPECTED) <= set(entries)
    for name, (role, n_classes, n_templates) in EXPECTED.items():
        e = entries[name]
        assert (e.role, len(e.classnames), len(e.templates)) == (role, n_classes, n_templates), name
        assert all("{}" in t for t in e.templates), name
        assert e.layout and e.official_splits and e.reader, name
        assert "openai/CLIP" in e.sources["classnames"] or "mlfoundations/patching" in e.sources["classnames"], name
        if name != "imagenet":  # CLIP's ImageNet list really has two 'missile' and two 'sunglasses'
            assert len(set(e.classnames)) == len(e.classnames), name
    assert [e.role for e in list_catalog()].count("patch") == 9


def test_catalog_spot_checks_against_clip_prompts():
    # a few entries copied by hand from openai/CLIP data/prompts.md and the ImageNet notebook
    assert catalog_entry("gtsrb").classnames[14] == "stop"
    assert catalog_entry("kitti").classnames[3] == "a photo i took with no car."
    assert catalog_entry("kitti").templates == ("{}",)
    assert catalog_entry("mnist").templates == ('a photo of the number: "{}".',)
    assert catalog_entry("eurosat").classnames[0] == "forest"
    assert (
        catalog_entry("eurosat").folders[catalog_entry("eurosat").classnames.index("brushland or shrubland")]
        == "HerbaceousVegetation"
    )
    assert catalog_entry("cifar100").classnames[26] == "crab"
    assert catalog_entry("sun397").classnames[8] == "apartment building outdoor"
    assert catalog_entry("cars").classnames[0] == "AM General Hummer SUV 2000"
    assert catalog_entry("resisc45").templates[0] == "satellite imagery of {}."
    inet = catalog_entry("imagenet")
    assert inet.classnames[:3] == ("tench", "goldfish", "great white shark") and inet.classnames[-1] == "toilet paper"
    assert inet.templates[0] == "a bad photo of a {}." and "itap of a {}." in inet.templates


def test_flip_only_where_it_makes_sense():
    for name in ("mnist", "svhn", "gtsrb", "fashion_mnist"):
        assert catalog_entry(name).flip is False, name
    for name in ("cifar10", "eurosat", "imagenet"):
        assert catalog_entry(name).flip is True, name


def test_lookup_aliases_and_unknown_names():
    assert catalog_entry("Stanford-Cars").name == "cars"
    assert catalog_entry("FashionMNIST").name == "fashion_mnist"
    with pytest.raises(PaintError, match="not in the catalog; known tasks: cars"):
        catalog_entry("birdsnap")


def test_describe_reports_presence(tmp_path):
    d = describe("svhn", tmp_path)
    assert d["present"] is False and d["n_classes"] == 10 and "train_32x32.mat" in d["layout"]
    (tmp_path / "svhn").mkdir()
    for s in ("train", "test"):
        (tmp_path / "svhn" / f"{s}_32x32.mat").write_bytes(b"")
    d = describe("svhn", tmp_path)
    assert d["present"] is True and d["path"] == str(tmp_path / "svhn")


def test_cli_tasks_list_and_show(tmp_path, capsys):
    assert main(["tasks", "--root", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mnist"]["role"] == "patch" and rows["mnist"]["present"] == "no"
    assert rows["imagenet"]["classes"] == "1000"
    assert rows["digits"]["role"] == "builtin"
    assert main(["tasks", "show", "dtd", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "classes (47): banded, blotchy" in out and "expected layout:" in out and "labels/train1.txt" in out
    assert "not found under" in out
    assert main(["tasks", "show", "nope"]) == 2
    assert "not in the catalog" in capsys.readouterr().err


def test_one_reader_registry_serves_reading_and_locating(tmp_path, monkeypatch):
    from paint.data.catalog import locate
    from paint.data.readers import READERS, FormatReader, ReadResult, read_catalog_layout

    assert {e.reader for e in list_catalog()} <= set(READERS), "a catalog entry names an unregistered reader"
    calls = []
    fake = FormatReader(
        lambda root, e, max_bad: calls.append((root, e["name"])) or ReadResult({}), lambda e: [["MARK"]]
    )
    monkeypatch.setitem(READERS, "svhn_mat", fake)  # replacing the entry changes both dispatch sites
    (tmp_path / "MARK").touch()
    assert locate(catalog_entry("svhn"), tmp_path) == tmp_path
    read_catalog_layout(tmp_path, catalog_entry("svhn").as_mapping())
    assert calls == [(tmp_path, "svhn")]
    with pytest.raises(PaintError, match="names unknown reader 'nope'; known readers: cifar, dtd, eurosat"):
        read_catalog_layout(tmp_path, {**catalog_entry("svhn").as_mapping(), "reader": "nope"})
