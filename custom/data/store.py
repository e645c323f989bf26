"""The prepared image store: a data list's images decoded once, as 8-bit one-channel arrays in a memory-mapped file.

``python -m custom.cli prepare`` (:mod:`custom.tools.prepare`) writes a folder::

    store.json     what the store holds: image_size, count, the source list's path and SHA-256, complete
    images.npy     (N, S, S) uint8, numpy's own format, read memory-mapped (one copy in the page cache,
                   shared by every data-loader worker and every process of a multi-GPU run)
    status.npy     (N,) uint8 per image: 0 not done yet, 1 stored, 2 unreadable (the resume mask)
    datalist.json  the source list's splits, labels and patients, each ``image`` a reference ``images.npy#<row>``
    errors.csv     the unreadable images (split, row, image, reason), when there are any

A data list with a top-level ``store`` entry is such a list: :class:`custom.DataList` resolves its images in
the store's folder and checks the store (:func:`check_store`), and :class:`custom.LoadImageChestXrayd` reads
``<file>.npy#<row>`` from the array instead of decoding a file. Each stored image is what the training's
``to_network_input`` makes of the original before normalisation (grey, resized, 0-1), rounded to 8 bits, so
the tensor the network gets from the store equals the one from the original within half a grey level.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..files import file_sha256

STORE_FILE, IMAGES_FILE, STATUS_FILE, DATALIST_FILE, ERRORS_FILE = (
    "store.json", "images.npy", "status.npy", "datalist.json", "errors.csv")
#: values of ``status.npy``.
PENDING, STORED, UNREADABLE = 0, 1, 2
#: the meta key a stored image carries: the side it was prepared at (checked against ``image_size``).
STORE_SIZE_KEY = "store_image_size"

_REF = re.compile(r"^(?P<file>.+\.npy)#(?P<row>\d+)$")
_OPEN: dict[str, np.ndarray] = {}  # images.npy path -> its memory map, per process


class StoreError(ValueError):
    """A store that cannot be used as asked (another size, a changed source list, unfinished); names both sides."""


def is_store_ref(path) -> bool:
    """Whether ``path`` is a reference ``<file>.npy#<row>`` into a store."""
    return isinstance(path, (str, Path)) and _REF.match(str(path)) is not None


def read_store_image(ref) -> np.ndarray:
    """The (S, S) uint8 image a reference ``<folder>/images.npy#<row>`` points to (a copy, from the memory map)."""
    match = _REF.match(str(ref))
    if match is None:
        raise ValueError(f"not a store reference (<file>.npy#<row>): {ref}")
    file, row = match["file"], int(match["row"])
    images = _OPEN.get(file)
    if images is None:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"cannot read image {ref}: the store file {file} does not exist")
        images = _OPEN[file] = np.load(file, mmap_mode="r")
    if not 0 <= row < len(images):
        raise IndexError(f"cannot read image {ref}: the store {file} holds rows 0-{len(images) - 1}")
    return np.array(images[row])


def check_store(datalist_path, store: dict, image_size: int | None = None) -> Path:
    """Check the store a data list points into; return its folder (the data list's folder).

    Refused (:class:`StoreError`, naming both sides): a source list that exists and no longer has the
    SHA-256 recorded at preparation (its labels or images changed: prepare again), a store prepared at
    another size than ``image_size`` (when given), an unfinished store, an images file of the wrong shape.
    """
    folder = Path(datalist_path).parent
    for key in ("image_size", "count", "source", "source_sha256"):
        if key not in store:
            raise StoreError(f"data list {datalist_path}: its 'store' entry has no '{key}' (written by "
                             "python -m custom.cli prepare)")
    size, count = int(store["image_size"]), int(store["count"])
    if image_size not in (None, "") and int(image_size) != size:
        raise StoreError(f"the store {folder} holds {size}-pixel images but image_size is {image_size}: prepare "
                         f"a store at {image_size} (python -m custom.cli prepare --image_size {image_size}) or train "
                         f"with --image_size {size}")
    source = Path(store["source"])
    if source.is_file() and file_sha256(source) != store["source_sha256"]:
        raise StoreError(f"the store {folder} was prepared from {source} with SHA-256 "
                         f"{store['source_sha256'][:12]}..., and that list has changed since (now "
                         f"{file_sha256(source)[:12]}...): prepare the store again from it")
    status = folder / STATUS_FILE
    if status.is_file() and (np.load(status, mmap_mode="r") == PENDING).any():
        raise StoreError(f"the store {folder} is unfinished: run python -m custom.cli prepare again with the same "
                         "options to finish it")
    images = folder / IMAGES_FILE
    if not images.is_file():
        raise FileNotFoundError(f"the store {folder} has no {IMAGES_FILE}")
    shape = np.load(images, mmap_mode="r").shape
    if tuple(shape) != (count, size, size):
        raise StoreError(f"the store {images} holds an array of shape {tuple(shape)}, its data list says "
                         f"{(count, size, size)}")
    return folder
