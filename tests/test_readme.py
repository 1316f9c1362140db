"""The README and the docs pages show the example configs as they are in examples/, every example
validates, and the documentation site (mkdocs.yml, docs/) covers every page and the public API."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Where the how-tos live: the README (the landing page) and every page under docs/.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _yaml_blocks() -> list[tuple[Path, str]]:
    """Every ```yaml block of the README and the docs pages, with the page that shows it."""
    return [
        (page, block)
        for page in PAGES
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    ]


def _named_example(block: str) -> Path | None:
    """The examples/ file a block names in its leading comments, if any."""
    for line in block.splitlines():
        if not line.startswith("#"):
            return None
        m = re.search(r"examples/([\w.-]+\.yaml)", line)
        if m:
            return ROOT / "examples" / m.group(1)
    return None


def test_docs_example_configs_equal_the_files():
    shown = [(page, b, _named_example(b)) for page, b in _yaml_blocks()]
    shown = [(page, b, p) for page, b, p in shown if p is not None]
    assert shown, "neither the README nor a docs page shows an example config that names its examples/ file"
    for page, block, path in shown:
        assert path.is_file(), f"{_rel(page)} shows {path.name}, which is not in examples/"
        assert yaml.safe_load(block) == yaml.safe_load(path.read_text(encoding="utf-8")), (
            f"{_rel(page)}'s {path.name} differs from examples/{path.name}"
        )


def _command(path: Path) -> str:
    m = re.search(r"^# paint (\w+) examples/", path.read_text(encoding="utf-8"), flags=re.M)
    assert m, f"{path.name} does not say which command runs it (# paint COMMAND examples/{path.name})"
    return m.group(1)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates_against_its_command(path):
    from paint.config import load_config
    from paint.pipeline.multitask import MultitaskConfig
    from paint.pipeline.patch import PatchConfig
    from paint.studies.compare import CompareConfig
    from paint.studies.scale import ScaleConfig
    from paint.studies.transfer import TransferConfig

    configs = {
        "patch": PatchConfig,
        "multitask": MultitaskConfig,
        "transfer": TransferConfig,
        "compare": CompareConfig,
        "scale": ScaleConfig,
    }
    cfg = load_config(configs[_command(path)], path)
    assert cfg.output_dir.startswith("runs/")


def test_transfer_has_an_example():
    assert "transfer" in {_command(p) for p in EXAMPLES}


def test_the_scale_example_spells_out_the_defaults():
    """`paint scale` without a config runs the study the scale table comes from (docs/scale_study.md): examples/scale.yaml."""
    from paint.config import load_config
    from paint.studies.scale import ScaleConfig

    assert load_config(ScaleConfig, ROOT / "examples" / "scale.yaml") == ScaleConfig()


def _site() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _nav_files(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for v in nav.values() for f in _nav_files(v)]
    return [f for item in nav for f in _nav_files(item)]


def test_the_site_home_is_the_readme():
    """docs/index.md is the README with its links made relative to docs/ (regenerate it from the README)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert home == readme.replace("](docs/", "]("), (
        "docs/index.md differs from the README: copy README.md to docs/index.md with '](docs/' made ']('"
    )


def test_every_docs_page_is_in_the_site_nav_and_every_nav_entry_exists():
    site = _site()
    docs = ROOT / site["docs_dir"]
    nav = _nav_files(site["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice in mkdocs.yml's nav"
    for page in nav:
        assert (docs / page).is_file(), f"mkdocs.yml's nav lists {page}, which is not in docs/"
    excluded = [p.strip().rstrip("/") for p in site.get("exclude_docs", "").splitlines() if p.strip()]
    for page in docs.rglob("*.md"):
        rel = page.relative_to(docs).as_posix()
        if not any(rel.startswith(e + "/") for e in excluded):
            assert rel in nav, f"docs/{rel} is not in mkdocs.yml's nav"


def test_the_readme_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((?!https?:|#)([^)#\s]+)", readme)
    assert any(link.startswith("docs/") for link in links), "the README links to no docs page"
    for link in links:
        assert (ROOT / link).exists(), f"the README links to {link}, which does not exist"


def test_the_api_reference_documents_every_public_module():
    """docs/reference.md renders (mkdocstrings) every module that defines a name of paint's API."""
    import paint

    shown = re.findall(
        r"^::: (paint[\w.]*)\s*$", (ROOT / "docs" / "reference.md").read_text(encoding="utf-8"), flags=re.M
    )
    assert len(shown) == len(set(shown)), "docs/reference.md renders a module twice"
    assert set(shown) == set(paint._API.values()), (
        f"docs/reference.md and paint._API differ: missing {sorted(set(paint._API.values()) - set(shown))}, "
        f"extra {sorted(set(shown) - set(paint._API.values()))}"
    )
