"""Safe checkpoint IO: formats, lazy listing, sharded atomic writing, refusal of unsafe pickle."""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from paint.errors import PaintError
from paint.weights import io, writer


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(40, 8, generator=g),
        "a.bias": torch.randn(8, generator=g).half(),
        "b.weight": torch.randn(6, 5, generator=g).bfloat16(),
        "steps": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
        "scale": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def _equal(x: dict, y: dict) -> bool:
    return set(x) == set(y) and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)


def test_single_file_roundtrip_and_interop(tmp_path):
    sd = _sd()
    path = writer.save_state_dict(sd, tmp_path / "w.safetensors")
    assert _equal(io.load_state_dict(path), sd)
    assert _equal(load_file(str(path)), sd)  # readable by the reference implementation
    save_file(sd, str(tmp_path / "ref.safetensors"))
    assert _equal(io.load_state_dict(tmp_path / "ref.safetensors"), sd)


def test_sharded_directory_has_index_and_roundtrips(tmp_path):
    sd = _sd()
    out = writer.save_state_dict(sd, tmp_path / "model", max_shard_bytes=400)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / io.SAFE_INDEX).read_text())
    assert set(index["weight_map"]) == set(sd)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert all(p.stat().st_size - 8 <= 400 + 2048 for p in out.glob("*.safetensors"))  # data + header
    assert _equal(io.load_state_dict(out), sd)
    # one file per shard as the reference library sees it
    merged = {}
    for name in shards:
        merged.update(load_file(str(out / name)))
    assert _equal(merged, sd)
    # a single shard is written as model.safetensors with no index
    single = writer.save_state_dict(sd, tmp_path / "one")
    assert [p.name for p in single.iterdir()] == ["model.safetensors"]


def test_listing_reads_only_the_header(tmp_path, monkeypatch):
    sd = _sd()
    path = writer.save_state_dict(sd, tmp_path / "w.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    size = path.stat().st_size
    with open(path, "r+b") as f:  # replace all tensor data with garbage: listing must still work
        f.seek(8 + header_len)
        f.write(b"\xff" * (size - 8 - header_len))
    monkeypatch.setattr(io, "safe_open", None)  # listing never maps the file
    infos = io.list_tensors(path)
    assert list(infos) == list(sd)  # file order = write order
    for k, t in sd.items():
        assert infos[k] == io.TensorInfo(tuple(t.shape), t.dtype)
    assert infos["a.weight"].nbytes == 40 * 8 * 4


def test_lazy_reader_rows_and_mapping(tmp_path):
    sd = _sd()
    reader = io.open_checkpoint(writer.save_state_dict(sd, tmp_path / "m", max_shard_bytes=500))
    assert torch.equal(reader.get_rows("a.weight", 5, 17), sd["a.weight"][5:17])
    lazy = reader.as_mapping()
    assert len(lazy) == len(sd) and torch.equal(lazy["steps"], sd["steps"])
    with pytest.raises(KeyError):
        lazy["nope"]
    with pytest.raises(PaintError, match="no tensor 'nope'"):
        reader.get("nope")


def test_legacy_bin_with_weights_only(tmp_path):
    sd = _sd()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    assert _equal(io.load_state_dict(tmp_path / "pytorch_model.bin"), sd)
    assert _equal(io.load_state_dict(tmp_path), sd)  # an HF directory with a legacy file
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "train.pt")  # open_clip's training wrapper
    assert _equal(io.load_state_dict(tmp_path / "train.pt"), sd)
    torch.save({"w": torch.ones(2), "note": "hello"}, tmp_path / "mixed.pt")
    with pytest.raises(PaintError, match="entry 'note' is a str"):
        io.load_state_dict(tmp_path / "mixed.pt")


class _Touch:
    """Unpickling this would create a file: the payload of a malicious checkpoint."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.mark.parametrize("style", ["zip", "legacy_pickle"])
def test_unsafe_pickle_is_refused_and_never_runs(tmp_path, style):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.bin"
    payload = {"w": torch.ones(2), "x": _Touch(marker)}
    if style == "zip":
        torch.save(payload, bad)
    else:
        with open(bad, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()
    with pytest.raises(
        PaintError, match=r"arbitrary pickle to load \((Unsupported global: )?GLOBAL [\w.]+[^)]*\); refused"
    ) as e:
        io.load_state_dict(bad)
    assert "Check the documentation" not in str(e.value) and "\n" not in str(e.value)  # torch's useful line only
    assert not marker.exists()


def test_torchscript_archive_is_refused(tmp_path):
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "jit.pt"))
    with pytest.raises(PaintError, match="TorchScript"):
        io.load_state_dict(tmp_path / "jit.pt")


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(PaintError, match="does not exist"):
        io.open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PaintError, match="has no model.safetensors"):
        io.open_checkpoint(tmp_path / "empty")
    out = writer.save_state_dict(_sd(), tmp_path / "m", max_shard_bytes=400)
    second = sorted(out.glob("model-*.safetensors"))[1]
    second.unlink()
    with pytest.raises(PaintError, match=f"names shard {second.name}, which is missing"):
        io.open_checkpoint(out)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(PaintError, match="not a readable safetensors file"):
        io.open_checkpoint(tmp_path / "junk.safetensors")


def test_writer_refuses_wrong_order_shape_and_replaces_atomically(tmp_path):
    infos = {"a": io.TensorInfo((2,), torch.float32), "b": io.TensorInfo((3,), torch.float32)}
    w = writer.ShardedWriter(tmp_path, infos)
    with pytest.raises(ValueError, match="expected tensor 'a' next"):
        w.write("b", torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        w.write("a", torch.zeros(3))
    w.abort()
    # save over an existing directory: the old content is replaced as a whole
    target = writer.save_state_dict({"x": torch.ones(1)}, tmp_path / "out")
    (target / "stale.txt").write_text("old")
    writer.save_state_dict({"y": torch.zeros(1)}, target)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert list(io.load_state_dict(target)) == ["y"]


def test_parse_size():
    assert writer.parse_size("2GB") == 2_000_000_000
    assert writer.parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert writer.parse_size(123) == 123
    with pytest.raises(PaintError, match="like 500MB"):
        writer.parse_size("lots")
    with pytest.raises(PaintError, match="positive"):
        writer.parse_size(0)
