"""The README shows the example configs as they are in examples/, and every example validates."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def _named_example(block: str) -> Path | None:
    """The examples/ file a block names in its leading comments, if any."""
    for line in block.splitlines():
        if not line.startswith("#"):
            return None
        m = re.search(r"examples/([\w.-]+\.yaml)", line)
        if m:
            return ROOT / "examples" / m.group(1)
    return None


def test_readme_example_configs_equal_the_files():
    shown = [(b, _named_example(b)) for b in _readme_yaml_blocks()]
    shown = [(b, p) for b, p in shown if p is not None]
    assert shown, "the README shows no example config that names its examples/ file"
    for block, path in shown:
        assert path.is_file(), f"the README shows {path.name}, which is not in examples/"
        assert yaml.safe_load(block) == yaml.safe_load(path.read_text(encoding="utf-8")), (
            f"README's {path.name} differs"
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
    """`paint scale` without a config runs the study the README's table comes from: examples/scale.yaml."""
    from paint.config import load_config
    from paint.studies.scale import ScaleConfig

    assert load_config(ScaleConfig, ROOT / "examples" / "scale.yaml") == ScaleConfig()
