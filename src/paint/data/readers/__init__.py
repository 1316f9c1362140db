"""Readers for standard dataset layouts, without torchvision; one module per format family.

Every reader returns :class:`ReadResult`: the splits it found on disk (some of ``train``,
``val``, ``test``; ``all`` when the data has no split), the class names the data itself
carries (folder names, a ClassLabel feature) when it has them, and a small ``info`` dict
for the results. Splits are lazy: files are decoded only when preprocessing asks for them,
and array formats (idx, CIFAR, SVHN, STL-10) are held in memory as uint8.

Bad data: every image file is checked once at read time (see
:func:`paint.data.images.check_image`; a truncated JPEG is caught). Unreadable ones are
counted, skipped and reported in ONE warning line that names a file; more than
``max_bad_fraction`` of a split raises :class:`PaintError`. A missing directory names the
layout that was expected, and a label outside the class list is an error.

Modules: ``common`` (result type, checks, identities), ``folders`` (class folders, CSV),
``idx``, ``cifar``, ``svhn_stl10``, ``benchmarks``, ``imagenet``, ``kitti`` (official
layouts), ``hf`` (Hugging Face datasets) and ``registry`` (the name -> reader dict that
catalog entries dispatch through).
"""

from paint.data.readers.benchmarks import (
    read_dtd,
    read_eurosat,
    read_food101,
    read_gtsrb,
    read_resisc45,
    read_stanford_cars,
    read_sun397,
)
from paint.data.readers.cifar import RestrictedUnpickler, read_cifar, restricted_load
from paint.data.readers.common import (
    DEFAULT_MAX_BAD,
    IMAGE_EXTS,
    ReadResult,
    file_split,
    filter_readable,
    require_dir,
)
from paint.data.readers.folders import read_class_folders, read_csv_list, read_image_folder
from paint.data.readers.hf import HFSplit, read_hf
from paint.data.readers.idx import read_idx, read_mnist_like
from paint.data.readers.imagenet import read_imagenet
from paint.data.readers.kitti import kitti_distance_label, kitti_video_splits, read_kitti_distance
from paint.data.readers.registry import READERS, FormatReader, probe_groups, read_catalog_layout
from paint.data.readers.svhn_stl10 import read_stl10, read_svhn

__all__ = [
    "DEFAULT_MAX_BAD",
    "IMAGE_EXTS",
    "READERS",
    "FormatReader",
    "HFSplit",
    "ReadResult",
    "RestrictedUnpickler",
    "file_split",
    "filter_readable",
    "kitti_distance_label",
    "kitti_video_splits",
    "probe_groups",
    "read_catalog_layout",
    "read_cifar",
    "read_class_folders",
    "read_csv_list",
    "read_dtd",
    "read_eurosat",
    "read_food101",
    "read_gtsrb",
    "read_hf",
    "read_idx",
    "read_image_folder",
    "read_imagenet",
    "read_kitti_distance",
    "read_mnist_like",
    "read_resisc45",
    "read_stanford_cars",
    "read_stl10",
    "read_sun397",
    "read_svhn",
    "require_dir",
    "restricted_load",
]
