"""Readers for every supported layout, on tiny fixtures written here; bad-data behaviour."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paint.data import readers as R
from paint.data.sources import load_external_task
from paint.data.spec import TaskSpec
from paint.errors import PaintError


def write_img(path: Path, value: int, size=(6, 5), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value % 256, dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def labels_of(split) -> list[int]:
    return np.asarray(split.labels).tolist()


# ----------------------------------------------------------------------------- user folder / CSV


def make_folder(root: Path, classes=("cat", "dog", "red fox"), per_class: int = 3) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = ".png" if i % 2 else ".jpg"
            write_img(root / name.replace(" ", "_") / f"{i}{ext}", 40 * c + i)
    return root


def test_user_folder_task_holds_out_test_then_val(tmp_path):
    make_folder(tmp_path / "data", per_class=10)
    spec = TaskSpec(name="pets", source="folder", path=str(tmp_path / "data"), test_fraction=0.2, val_fraction=0.25)
    task, info = load_external_task(spec)
    assert task.classnames == ("cat", "dog", "red fox")  # underscores shown as spaces
    sizes = {k: len(v) for k, v in task.splits.items()}
    assert sizes == {"train": 18, "val": 6, "test": 6}
    assert info["test"]["derived"] and info["val"]["derived"]
    # the derived test split is described as a test split (its own keys, identity and full hash)
    assert info["test"]["test_size"] == 6 and info["test"]["trainval_size"] == 24
    assert len(info["test"]["test_indices_sha256"]) == 64 and "val_size" not in info["test"]
    assert "/test-" in task.splits["test"].identity and "/val-" not in task.splits["test"].identity
    assert info["val"]["seed"] == 0 and len(info["val"]["val_indices_sha256"]) == 64
    # val comes from train's images, never from test's
    test_paths = {task.splits["test"].base.paths[i] for i in task.splits["test"].indices}
    val_split = task.splits["val"]
    val_paths = {val_split.base.base.paths[val_split.base.indices[i]] for i in val_split.indices}
    assert not test_paths & val_paths
    # a different split_seed moves val but not test
    task2, info2 = load_external_task(spec.model_copy(update={"split_seed": 1}))
    assert info2["test"]["test_indices_sha256"] == info["test"]["test_indices_sha256"]
    assert info2["val"]["val_indices_sha256"] != info["val"]["val_indices_sha256"]
    img = task.splits["train"].image(0)
    assert img.mode == "RGB"


def test_user_folder_with_subsets_and_given_classnames(tmp_path):
    for s in ("train", "test"):
        make_folder(tmp_path / s, classes=("red fox", "cat"), per_class=2)
    spec = TaskSpec(name="t", source="folder", path=str(tmp_path), classnames=["red fox", "cat"], templates=["a {}."])
    task, info = load_external_task(spec)
    assert task.classnames == ("red fox", "cat") and task.templates == ("a {}.",)
    assert labels_of(task.splits["test"]) == [1, 1, 0, 0]  # cat folder sorts first; label follows the list
    assert info["test"]["official"] and info["val"]["derived"]


def test_folder_with_unknown_class_folder_is_an_error(tmp_path):
    make_folder(tmp_path, classes=("cat", "dog"))
    with pytest.raises(PaintError, match="not one of the 1 classes"):
        R.read_image_folder(tmp_path, classnames=["cat"])


def test_csv_list_with_names_ints_and_split_column(tmp_path):
    for i in range(4):
        write_img(tmp_path / "img" / f"{i}.png", i)
    (tmp_path / "list.csv").write_text(
        "path,label,split\nimg/0.png,cat,train\nimg/1.png,dog,train\nimg/2.png,1,test\nimg/3.png,cat,test\n"
    )
    spec = TaskSpec(name="c", source="csv", path=str(tmp_path / "list.csv"), classnames=["cat", "dog"])
    task, _ = load_external_task(spec)
    assert labels_of(task.splits["test"]) == [1, 0]
    assert len(task.splits["train"]) + len(task.splits["val"]) == 2


def test_csv_label_outside_class_list(tmp_path):
    write_img(tmp_path / "a.png", 1)
    (tmp_path / "l.csv").write_text("a.png,bird\n")
    with pytest.raises(PaintError, match="not one of the 2 class names"):
        R.read_csv_list(tmp_path / "l.csv", ["cat", "dog"])
    (tmp_path / "l.csv").write_text("a.png,5\n")
    with pytest.raises(PaintError, match="label 5 is outside the 2 class names"):
        R.read_csv_list(tmp_path / "l.csv", ["cat", "dog"])


# ----------------------------------------------------------------------------- bad data


def test_corrupt_image_skipped_with_one_warning(tmp_path, caplog):
    make_folder(tmp_path, classes=("a", "b"), per_class=60)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with caplog.at_level(logging.WARNING, logger="paint.data"):
        res = R.read_image_folder(tmp_path)
    assert len(res.splits["all"]) == 120 and res.info["bad_images"] == 1
    lines = [r for r in caplog.records if r.name == "paint.data"]
    assert len(lines) == 1 and "skipped 1 unreadable of 121" in lines[0].getMessage()


def test_too_many_corrupt_images_is_an_error(tmp_path):
    make_folder(tmp_path, classes=("a", "b"), per_class=5)
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    with pytest.raises(PaintError, match=r"1 of 11 images are unreadable .* > the 1.0% allowed"):
        R.read_image_folder(tmp_path)
    R.read_image_folder(tmp_path, max_bad=0.2)  # a looser threshold lets it through


def test_missing_directory_names_the_expected_layout(tmp_path):
    with pytest.raises(PaintError, match=r"not found; expected layout: .*train-images-idx3-ubyte"):
        load_external_task(TaskSpec(name="mnist", source="catalog", path=str(tmp_path / "nope")))
    with pytest.raises(PaintError, match=r"expected layout: .*cars_train"):
        load_external_task(TaskSpec(name="cars", source="catalog", path=str(tmp_path)))


def test_label_outside_class_list_in_array_data(tmp_path):
    write_idx_pair(tmp_path, "train", n=13, label_max=12)
    write_idx_pair(tmp_path, "t10k", n=2)
    with pytest.raises(PaintError, match="label 1[0-2] is outside the 10 class names"):
        R.read_mnist_like(tmp_path)


# ----------------------------------------------------------------------------- MNIST idx


def write_idx_pair(root: Path, prefix: str, n: int, gz: bool = False, label_max: int = 9) -> np.ndarray:
    rng = np.random.default_rng(len(prefix) + n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % (label_max + 1)).astype(np.uint8)
    op = gzip.open if gz else open
    sfx = ".gz" if gz else ""
    with op(root / f"{prefix}-images-idx3-ubyte{sfx}", "wb") as f:
        f.write(struct.pack(">BBBB3I", 0, 0, 8, 3, n, 28, 28) + images.tobytes())
    with op(root / f"{prefix}-labels-idx1-ubyte{sfx}", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels.tobytes())
    return images


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    images = write_idx_pair(tmp_path, "train", 30, gz)
    write_idx_pair(tmp_path, "t10k", 12, gz)
    task, info = load_external_task(TaskSpec(name="mnist", source="catalog", path=str(tmp_path)))
    assert task.classnames == tuple(str(i) for i in range(10))
    assert task.templates == ('a photo of the number: "{}".',)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 27, "val": 3, "test": 12}
    assert labels_of(task.splits["test"]) == [i % 10 for i in range(12)]
    first_train = task.splits["train"].indices[0]
    assert np.array_equal(np.asarray(task.splits["train"].image(0).convert("L")), images[first_train])


def test_fashion_mnist_under_torchvision_raw_folder(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx_pair(raw, "train", 10, gz=True)
    write_idx_pair(raw, "t10k", 10, gz=True)
    task, _ = load_external_task(TaskSpec(name="fashion_mnist", source="catalog", path=str(tmp_path)))
    assert task.classnames[0] == "T-shirt/top" and len(task.splits["test"]) == 10


def test_truncated_idx_is_an_error(tmp_path):
    (tmp_path / "x").write_bytes(struct.pack(">BBBB3I", 0, 0, 8, 3, 5, 28, 28) + b"\0" * 100)
    with pytest.raises(PaintError, match="truncated"):
        R.read_idx(tmp_path / "x")


# ----------------------------------------------------------------------------- CIFAR + restricted unpickler


def write_cifar_batch(path: Path, n: int, label_key: str, n_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    d = {
        b"batch_label": b"batch",
        label_key.encode(): [i % n_classes for i in range(n)],
        b"data": data,
        b"filenames": [f"{i}.png".encode() for i in range(n)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(d, protocol=2))
    return data


def test_cifar10_and_cifar100(tmp_path):
    d10 = tmp_path / "c10" / "cifar-10-batches-py"
    datas = [write_cifar_batch(d10 / f"data_batch_{i}", 4, "labels", 10, seed=i) for i in range(1, 6)]
    write_cifar_batch(d10 / "test_batch", 5, "labels", 10)
    task, _ = load_external_task(TaskSpec(name="cifar10", source="catalog", path=str(tmp_path / "c10")))
    assert task.classnames[0] == "airplane" and len(task.splits["test"]) == 5
    assert len(task.splits["train"]) + len(task.splits["val"]) == 20
    # CIFAR rows are channel-planar: (3, 32, 32) -> HWC
    base = task.splits["train"].base
    assert np.array_equal(np.asarray(base.image(0)), datas[0][0].reshape(3, 32, 32).transpose(1, 2, 0))
    d100 = tmp_path / "c100" / "cifar-100-python"
    write_cifar_batch(d100 / "train", 8, "fine_labels", 100)
    write_cifar_batch(d100 / "test", 3, "fine_labels", 100)
    task, _ = load_external_task(TaskSpec(name="cifar100", source="catalog", path=str(tmp_path / "c100")))
    assert len(task.classnames) == 100 and labels_of(task.splits["test"]) == [0, 1, 2]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(PaintError, match=r"refusing to load a pickle that asks for (posix|os|nt)\.system"):
        R.restricted_load(payload)
    assert not marker.exists(), "the pickle's code ran"
    # through the CIFAR reader too, and with an arbitrary class instead of a function
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(payload)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps({"x": Path("/")}))
    with pytest.raises(PaintError, match="refusing"):
        R.read_cifar(tmp_path, 10)
    assert not marker.exists()


def test_restricted_unpickler_allows_plain_arrays_lists_dicts():
    obj = {"a": np.arange(5, dtype=np.int64), "b": [1, 2.5, "x"], "c": {"d": np.zeros((2, 2), np.float32)}}
    for protocol in (2, 4, 5):
        out = R.restricted_load(pickle.dumps(obj, protocol=protocol))
        assert np.array_equal(out["a"], obj["a"]) and out["b"] == obj["b"] and out["c"]["d"].shape == (2, 2)


def test_corrupt_and_unsafe_cifar_batches_name_the_file(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        write_cifar_batch(d / f"data_batch_{i}", 2, "labels", 10, seed=i)
    test_batch = d / "test_batch"
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    test_batch.write_bytes(good[: len(good) // 2])  # a cut download
    with pytest.raises(PaintError, match=rf"^{re.escape(str(test_batch))}: not a readable pickle"):
        R.read_cifar(tmp_path, 10)
    test_batch.write_bytes(pickle.dumps({b"data": _Evil(tmp_path / "pwned"), b"labels": [0]}, protocol=2))
    with pytest.raises(PaintError, match=rf"^{re.escape(str(test_batch))}: refusing to load a pickle"):
        R.read_cifar(tmp_path, 10)
    bad_batch = d / "data_batch_3"
    bad_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    test_batch.write_bytes(good)
    with pytest.raises(PaintError, match=rf"^{re.escape(str(bad_batch))}: CIFAR batch data is not 3x32x32"):
        R.read_cifar(tmp_path, 10)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- SVHN, STL-10


def test_svhn_mat(tmp_path):
    import scipy.io

    for split, n in (("train", 6), ("test", 4)):
        x = np.random.default_rng(n).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [4], [5]][:n], dtype=np.uint8)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    task, _ = load_external_task(TaskSpec(name="svhn", source="catalog", path=str(tmp_path)))
    assert labels_of(task.splits["test"]) == [0, 1, 2, 3]  # label 10 is the digit 0
    assert np.array_equal(np.asarray(task.splits["test"].image(2)), x[:, :, :, 2])


def test_stl10_binary_orientation(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    img = np.zeros((96, 96, 3), dtype=np.uint8)
    img[0, 5] = (255, 0, 0)  # row 0, column 5: red
    for split, n in (("train", 3), ("test", 2)):
        # STL-10 stores each image column-major as (C, W, H)
        (d / f"{split}_X.bin").write_bytes(np.stack([img] * n).transpose(0, 3, 2, 1).tobytes())
        (d / f"{split}_y.bin").write_bytes(np.arange(1, n + 1, dtype=np.uint8).tobytes())
    task, _ = load_external_task(TaskSpec(name="stl10", source="catalog", path=str(tmp_path)))
    assert labels_of(task.splits["test"]) == [0, 1]
    assert np.array_equal(np.asarray(task.splits["test"].image(0)), img)


# ----------------------------------------------------------------------------- benchmark layouts


def test_gtsrb_official_layout(tmp_path):
    train = tmp_path / "GTSRB" / "Final_Training" / "Images"
    for c in (0, 2, 42):
        for i in range(2):
            write_img(train / f"{c:05d}" / f"00000_{i:05d}.ppm", c)
    test = tmp_path / "GTSRB" / "Final_Test" / "Images"
    for i in range(3):
        write_img(test / f"{i:05d}.ppm", i)
    (tmp_path / "GT-final_test.csv").write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
        + "".join(f"{i:05d}.ppm;6;5;0;0;5;4;{c}\n" for i, c in enumerate((7, 0, 42)))
    )
    task, _ = load_external_task(TaskSpec(name="gtsrb", source="catalog", path=str(tmp_path)))
    assert len(task.classnames) == 43
    assert labels_of(task.splits["test"]) == [7, 0, 42]
    base = task.splits["train"].base
    assert sorted(set(labels_of(base))) == [0, 2, 42] and len(base) == 6


def test_eurosat_flat_and_split_layouts(tmp_path):
    folders = [
        "AnnualCrop",
        "Forest",
        "HerbaceousVegetation",
        "Highway",
        "Industrial",
        "Pasture",
        "PermanentCrop",
        "Residential",
        "River",
        "SeaLake",
    ]
    for f in folders:
        for i in range(2):
            write_img(tmp_path / "flat" / "2750" / f / f"{f}_{i}.jpg", i)
    task, info = load_external_task(TaskSpec(name="eurosat", source="catalog", path=str(tmp_path / "flat")))
    assert info["test"]["fraction"] == 0.1 and len(task.splits["test"]) == 2
    full = task.splits["test"].base
    by_folder = {Path(p).parent.name: y for p, y in zip(full.paths, full.labels.tolist())}
    assert task.classnames[by_folder["Forest"]] == "forest"
    assert task.classnames[by_folder["HerbaceousVegetation"]] == "brushland or shrubland"
    for s in ("train", "test"):
        for f in folders[:3]:
            write_img(tmp_path / "split" / s / f / "x.jpg", 1)
    task, info = load_external_task(TaskSpec(name="eurosat", source="catalog", path=str(tmp_path / "split")))
    assert len(task.splits["test"]) == 3 and info["test"]["official"]


def test_resisc45_with_split_lists(tmp_path):
    from paint.data.catalog import catalog_entry

    names = catalog_entry("resisc45").classnames
    base = tmp_path / "NWPU-RESISC45"
    for c in names[:3]:
        for i in range(1, 4):
            write_img(base / c.replace(" ", "_") / f"{c.replace(' ', '_')}_{i:03d}.jpg", i)
    (tmp_path / "resisc45-train.txt").write_text(
        "airplane_001.jpg\nairport_001.jpg\nbaseball_diamond_001.jpg\nairplane_002.jpg\n"
    )
    (tmp_path / "resisc45-val.txt").write_text("airport_002.jpg\n")
    (tmp_path / "resisc45-test.txt").write_text("baseball_diamond_003.jpg\nairplane_003.jpg\n")
    task, info = load_external_task(TaskSpec(name="resisc45", source="catalog", path=str(tmp_path)))
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 4, "val": 1, "test": 2}
    assert sorted(labels_of(task.splits["test"])) == [0, 2] and info["val"]["official"]


def test_dtd_partition_one(tmp_path):
    for c in ("banded", "zigzagged"):
        for i in range(3):
            write_img(tmp_path / "dtd" / "images" / c / f"{c}_{i}.jpg", i)
    lab = tmp_path / "dtd" / "labels"
    lab.mkdir()
    (lab / "train1.txt").write_text("banded/banded_0.jpg\nzigzagged/zigzagged_0.jpg\n")
    (lab / "val1.txt").write_text("banded/banded_1.jpg\n")
    (lab / "test1.txt").write_text("zigzagged/zigzagged_2.jpg\nbanded/banded_2.jpg\n")
    task, _ = load_external_task(TaskSpec(name="dtd", source="catalog", path=str(tmp_path)))
    assert labels_of(task.splits["test"]) == [46, 0] and len(task.splits["val"]) == 1


def test_sun397_partition_files(tmp_path):
    base = tmp_path / "SUN397"
    (base).mkdir()
    (base / "ClassName.txt").write_text("/a/abbey\n/a/apartment_building/outdoor\n/y/youth_hostel\n")
    rel = [
        "/a/abbey/sun_1.jpg",
        "/a/apartment_building/outdoor/sun_2.jpg",
        "/y/youth_hostel/sun_3.jpg",
        "/a/abbey/sun_4.jpg",
    ]
    for i, r in enumerate(rel):
        write_img(base / r.lstrip("/"), i)
    (tmp_path / "Training_01.txt").write_text("\n".join(rel[:3]) + "\n")
    (tmp_path / "Testing_01.txt").write_text(rel[3] + "\n" + rel[1] + "\n")
    task, _ = load_external_task(TaskSpec(name="sun397", source="catalog", path=str(tmp_path)))
    assert labels_of(task.splits["test"]) == [0, 8]  # abbey, apartment building outdoor
    assert len(task.splits["train"]) + len(task.splits["val"]) == 3


def test_stanford_cars_devkit(tmp_path):
    import scipy.io

    def annos(path: Path, rows):
        dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
        arr = np.array([(1, 1, 4, 4, c, f) for c, f in rows], dtype=dt)
        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, {"annotations": arr})

    for i in range(3):
        write_img(tmp_path / "cars_train" / f"{i:05d}.jpg", i)
        write_img(tmp_path / "cars_test" / f"{i:05d}.jpg", i)
    annos(tmp_path / "devkit" / "cars_train_annos.mat", [(1, "00000.jpg"), (196, "00001.jpg"), (2, "00002.jpg")])
    annos(tmp_path / "cars_test_annos_withlabels.mat", [(5, "00000.jpg"), (1, "00002.jpg")])
    task, _ = load_external_task(TaskSpec(name="cars", source="catalog", path=str(tmp_path)))
    assert labels_of(task.splits["test"]) == [4, 0]
    assert task.classnames[195] == "smart fortwo Convertible 2012"


def test_food101_meta_lists(tmp_path):
    base = tmp_path / "food-101"
    for c in ("apple_pie", "waffles"):
        for i in range(2):
            write_img(base / "images" / c / f"{i}.jpg", i)
    (base / "meta").mkdir()
    (base / "meta" / "train.txt").write_text("apple_pie/0\nwaffles/0\n")
    (base / "meta" / "test.txt").write_text("waffles/1\napple_pie/1\n")
    task, _ = load_external_task(TaskSpec(name="food101", source="catalog", path=str(tmp_path), val_fraction=0.5))
    assert labels_of(task.splits["test"]) == [100, 0]


def test_imagenet_val_folders_and_flat_solution_csv(tmp_path):
    entry = {"name": "imagenet", "reader": "imagenet", "layout": "val/<wnid>", "classnames": ["a", "b", "c"]}
    wnids = ["n01", "n02", "n03"]
    for k, w in enumerate(wnids):
        write_img(tmp_path / "folders" / "val" / w / f"v{k}.JPEG", k, fmt="JPEG")
        write_img(tmp_path / "folders" / "train" / w / f"t{k}.JPEG", k, fmt="JPEG")
    res = R.read_imagenet(tmp_path / "folders", entry)
    assert labels_of(res.splits["test"]) == [0, 1, 2] and len(res.splits["train"]) == 3
    flat = tmp_path / "flat"
    for k, w in enumerate(["n03", "n01", "n02"]):
        write_img(flat / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", k, fmt="JPEG")
    (flat / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        + "".join(f"ILSVRC2012_val_{k:08d},{w} 1 2 3 4 \n" for k, w in enumerate(["n03", "n01", "n02"]))
    )
    res = R.read_imagenet(flat, entry)
    assert labels_of(res.splits["test"]) == [2, 0, 1] and "train" not in res.splits
    with pytest.raises(PaintError, match="found 3 class folders, expected 1000"):
        load_external_task(TaskSpec(name="imagenet", source="catalog", path=str(tmp_path / "folders")))


def write_devkit_meta(path: Path, synsets: list[tuple[int, str, int]]) -> None:
    """``meta.mat`` as the ILSVRC2012 devkit ships it: an (N, 1) struct array ``synsets``."""
    import scipy.io

    fields = (
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    )
    arr = np.empty((len(synsets), 1), dtype=[(f, "O") for f in fields])
    for i, (sid, wnid, n_children) in enumerate(synsets):
        children = np.arange(1, n_children + 1, dtype=np.float64) if n_children else np.zeros((1, 0))
        for f, v in zip(fields, (sid, wnid, f"words {wnid}", "gloss", n_children, children, int(n_children > 0), 1300)):
            arr[i, 0][f] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": arr})


def test_imagenet_official_val_tar_with_devkit(tmp_path):
    entry = {"name": "imagenet", "reader": "imagenet", "layout": "devkit", "classnames": ["a", "b", "c"]}
    # devkit ids follow meta.mat's order, not sorted wnids: ID 1 = n02, 2 = n03, 3 = n01; 4 is an inner node
    write_devkit_meta(
        tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat",
        [(1, "n02", 0), (2, "n03", 0), (3, "n01", 0), (4, "n00", 3)],
    )
    truth = [1, 3, 2, 1, 2]
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{t}\n" for t in truth)
    )
    for k in range(1, len(truth) + 1):
        write_img(tmp_path / "ILSVRC2012_img_val" / f"ILSVRC2012_val_{k:08d}.JPEG", k, fmt="JPEG")
    write_img(tmp_path / "train" / "n03" / "t.JPEG", 9, fmt="JPEG")
    for w in ("n01", "n02"):
        write_img(tmp_path / "train" / w / "t.JPEG", 9, fmt="JPEG")
    res = R.read_catalog_layout(tmp_path, entry)
    # class i = i-th sorted wnid: n01 -> 0, n02 -> 1, n03 -> 2
    assert labels_of(res.splits["test"]) == [1, 0, 2, 1, 2]
    assert [Path(p).name for p in res.splits["test"].paths][:2] == [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000002.JPEG",
    ]
    assert labels_of(res.splits["train"]) == [0, 1, 2] and res.info["val_labels"] == "official devkit ground truth"
    from paint.data.catalog import catalog_entry, locate

    assert locate(catalog_entry("imagenet"), tmp_path) == tmp_path  # the flat official folder is recognised
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n7\n")
    with pytest.raises(PaintError, match=r"ground_truth.txt line 2: '7' is not an ILSVRC2012_ID"):
        R.read_catalog_layout(tmp_path, entry)
    write_devkit_meta(tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat", [(1, "n02", 0), (2, "n00", 1)])
    with pytest.raises(PaintError, match=r"meta.mat: 1 leaf synsets \(num_children == 0\), expected 3"):
        R.read_catalog_layout(tmp_path, entry)


def test_kitti_distance_labels_and_video_split(tmp_path):
    img, lab, mp = tmp_path / "training" / "image_2", tmp_path / "training" / "label_2", tmp_path / "mapping"
    lab.mkdir(parents=True)
    mp.mkdir()
    depths = [5.0, 12.0, 30.0, None]  # -> classes 0, 1, 2, 3
    n = 20
    for i in range(n):
        write_img(img / f"{i:06d}.png", i)
        z = depths[i % 4]
        lines = ["Pedestrian 0 0 0 1 1 2 2 1 1 1 0 0 3.0 0"]  # not a vehicle: ignored
        if z is not None:
            lines.append(f"Car 0 0 0 1 1 2 2 1 1 1 0 0 {z} 0")
            lines.append(f"Van 0 0 0 1 1 2 2 1 1 1 0 0 {z + 50} 0")
        (lab / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    # 10 drives, 2 images each; train_rand maps image i -> mapping line
    (mp / "train_mapping.txt").write_text(
        "".join(f"2011_09_26 2011_09_26_drive_{i // 2:04d}_sync {i:010d}\n" for i in range(n))
    )
    (mp / "train_rand.txt").write_text(",".join(str(i + 1) for i in range(n)))
    task, info = load_external_task(TaskSpec(name="kitti", source="catalog", path=str(tmp_path)))
    sizes = {k: len(v) for k, v in task.splits.items()}
    assert sizes == {"train": 16, "val": 2, "test": 2} and info["val"]["official"]
    for s in task.splits.values():
        for p, y in zip(s.paths, s.labels.tolist()):
            assert y == int(Path(p).stem) % 4
    # whole videos stay together
    drive = lambda p: int(Path(p).stem) // 2  # noqa: E731
    assert len({drive(p) for p in task.splits["test"].paths}) == 1
    assert R.kitti_distance_label("") == 3 and R.kitti_distance_label("Truck 0 0 0 1 1 2 2 1 1 1 0 0 8.0 0") == 0


# ----------------------------------------------------------------------------- Hugging Face datasets


def _hf_dataset(n: int = 6):
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    imgs = [Image.fromarray(np.full((5, 7, 3), (30 * i) % 256, dtype=np.uint8)) for i in range(n)]
    return datasets.Dataset.from_dict({"img": imgs, "y": [i % 3 for i in range(n)]}, features=feats)


def test_hf_save_to_disk_with_column_mapping(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": _hf_dataset(10), "test": _hf_dataset(4)})
    dd.save_to_disk(str(tmp_path / "ds"))
    spec = TaskSpec(name="abc", source="hf", path=str(tmp_path / "ds"), image_column="img", label_column="y")
    task, info = load_external_task(spec)
    assert task.classnames == ("ant", "bee", "cow")
    assert labels_of(task.splits["test"]) == [0, 1, 2, 0]
    assert np.asarray(task.splits["test"].image(1))[0, 0, 0] == 30
    assert info["sizes"] == {"train": 9, "val": 1, "test": 4}
    with pytest.raises(PaintError, match="no column 'image'"):
        load_external_task(TaskSpec(name="abc", source="hf", path=str(tmp_path / "ds"), label_column="y"))


def test_hf_parquet_and_imagefolder(tmp_path):
    pq = tmp_path / "pq"
    pq.mkdir()
    _hf_dataset(6).to_parquet(str(pq / "train-00000.parquet"))
    _hf_dataset(3).to_parquet(str(pq / "test-00000.parquet"))
    task, _ = load_external_task(
        TaskSpec(
            name="p", source="hf", path=str(pq), image_column="img", label_column="y", classnames=["ant", "bee", "cow"]
        )
    )
    assert len(task.splits["test"]) == 3 and task.splits["test"].image(0).size == (7, 5)
    imf = tmp_path / "imf"
    for s, n in (("train", 3), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                write_img(imf / s / c / f"{i}.png", i)
    task, _ = load_external_task(TaskSpec(name="i", source="hf", path=str(imf)))
    assert task.classnames == ("cat", "dog") and len(task.splits["test"]) == 4


def test_source_errors_are_one_line_paint_errors(tmp_path):
    with pytest.raises(PaintError, match="not a directory, parquet file or hub id"):
        load_external_task(TaskSpec(name="x", source="hf", path=str(tmp_path / "missing")))
    write_idx_pair(tmp_path, "train", 10)
    write_idx_pair(tmp_path, "t10k", 10)
    with pytest.raises(PaintError, match="2 class names given but the catalog task has 10"):
        load_external_task(TaskSpec(name="mnist", source="catalog", path=str(tmp_path), classnames=["a", "b"]))
    with pytest.raises(PaintError, match="not in the catalog"):
        load_external_task(TaskSpec(name="mnist2", source="catalog", path=str(tmp_path)))


def test_registry_dispatches_to_sources_and_cache_works(tmp_path):
    from paint.data.preprocess import ImageSpec, preprocess_split
    from paint.data.registry import load_task

    write_idx_pair(tmp_path, "train", 20)
    write_idx_pair(tmp_path, "t10k", 5)
    spec = TaskSpec(name="mnist", source="catalog", path=str(tmp_path), templates=["digit {}"])
    task, info = load_task(spec)
    assert task.templates == ("digit {}",) and info["catalog"] == "mnist" and info["role"] == "patch"
    assert "openai/CLIP" in info["prompt_sources"]["templates"]
    test = task.split("test")
    images = preprocess_split(test, ImageSpec(16, 16, (0.5,) * 3, (0.5,) * 3), cache_dir=tmp_path / "cache")
    assert images.shape == (5, 3, 16, 16) and images.dtype.is_floating_point is False
