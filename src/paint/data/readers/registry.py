"""The one name -> reader registry for the catalog's official layouts.

A catalog entry names its reader (``"reader": "cifar"``); :data:`READERS` maps that name
to the function that reads the layout and to the paths whose presence shows the layout is
on disk (used by :func:`paint.data.catalog.locate`). Every dispatch goes through this
dict: adding a format is one entry here, nothing is discovered by scanning modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paint.data.readers import benchmarks, cifar, idx, imagenet, kitti, svhn_stl10
from paint.data.readers.common import DEFAULT_MAX_BAD, ReadResult
from paint.errors import PaintError

Entry = Mapping[str, Any]  # CatalogEntry.as_mapping(): name, reader, layout, classnames, folders
ReadFn = Callable[[Path, Entry, float], ReadResult]
ProbeFn = Callable[[Entry], list[list[str]]]


@dataclass(frozen=True)
class FormatReader:
    """How to read one official layout, and how to tell it is there.

    Attributes:
        read: ``(root, entry, max_bad) -> ReadResult``.
        probes: groups of paths relative to the data root; the layout is present when one
            path of every group exists.
    """

    read: ReadFn
    probes: ProbeFn


def _static(*groups: list[str]) -> ProbeFn:
    return lambda entry: [list(g) for g in groups]


def _idx_probes(entry: Entry) -> list[list[str]]:
    subs = ["", "raw/", "MNIST/raw/", "FashionMNIST/raw/"]
    stems = ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]
    return [[f"{d}{s}{gz}" for d in subs for gz in ("", ".gz")] for s in stems]


def _cifar_probes(entry: Entry) -> list[list[str]]:
    if len(entry["classnames"]) == 10:
        return [["cifar-10-batches-py/test_batch", "test_batch"]]
    return [["cifar-100-python/test", "test"]]


READERS: dict[str, FormatReader] = {
    "idx": FormatReader(
        lambda root, e, max_bad: idx.read_mnist_like(root, len(e["classnames"]), e["name"]), _idx_probes
    ),
    "cifar": FormatReader(lambda root, e, max_bad: cifar.read_cifar(root, len(e["classnames"])), _cifar_probes),
    "svhn_mat": FormatReader(
        lambda root, e, max_bad: svhn_stl10.read_svhn(root), _static(["train_32x32.mat"], ["test_32x32.mat"])
    ),
    "stl10_binary": FormatReader(
        lambda root, e, max_bad: svhn_stl10.read_stl10(root), _static(["stl10_binary/test_X.bin", "test_X.bin"])
    ),
    "stanford_cars": FormatReader(benchmarks.read_stanford_cars, _static(["cars_train"], ["cars_test"])),
    "dtd": FormatReader(
        benchmarks.read_dtd, _static(["images", "dtd/images"], ["labels/test1.txt", "dtd/labels/test1.txt"])
    ),
    "eurosat": FormatReader(benchmarks.read_eurosat, _static(["train", "2750", "EuroSAT_RGB", "EuroSAT", "Forest"])),
    "gtsrb": FormatReader(
        benchmarks.read_gtsrb,
        _static(
            ["GTSRB/Final_Training/Images", "Final_Training/Images", "GTSRB/Training", "Training"],
            ["GT-final_test.csv", "GTSRB/GT-final_test.csv", "GTSRB/Final_Test/Images/GT-final_test.csv"],
        ),
    ),
    "kitti_distance": FormatReader(kitti.read_kitti_distance, _static(["training/image_2", "raw/training/image_2"])),
    "resisc45": FormatReader(benchmarks.read_resisc45, _static(["NWPU-RESISC45", "resisc45"])),
    "sun397": FormatReader(benchmarks.read_sun397, _static(["SUN397/ClassName.txt", "ClassName.txt"])),
    "food101": FormatReader(benchmarks.read_food101, _static(["food-101/meta/test.txt", "meta/test.txt"])),
    "imagenet": FormatReader(imagenet.read_imagenet, _static(list(imagenet.VAL_DIRS))),
}


def format_reader(entry: Entry) -> FormatReader:
    """The registered reader an entry names, or a PaintError listing the known ones."""
    name = entry["reader"]
    if name not in READERS:
        raise PaintError(
            f"catalog entry {entry['name']!r} names unknown reader {name!r}; known readers: {', '.join(sorted(READERS))}"
        )
    return READERS[name]


def read_catalog_layout(root: str | Path, entry: Entry, max_bad: float = DEFAULT_MAX_BAD) -> ReadResult:
    """Read a catalog task from ``root`` with the reader its entry names."""
    return format_reader(entry).read(Path(root), entry, max_bad)


def probe_groups(entry: Entry) -> list[list[str]]:
    """Paths (relative to a data root) whose presence shows the entry's layout is on disk."""
    return format_reader(entry).probes(entry)
