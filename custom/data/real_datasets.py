"""A training data list with the test splits of other data lists (other datasets, other folders).

The paper trains on NIH (or CheXpert) and tests on OpenI, PadChest and the Google relabel of NIH:
each test set is its own data list with its own image folder. :class:`DataListWithTests` shows
them to the bundle as one data list whose extra test splits are named after the lists, so
``TestReport`` evaluates every one of them, and everything is checked before training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .datalist import DataList, DataListError
from .messages import bad_images_message, listing


class DataListWithTests:
    """A :class:`~custom.data.DataList` plus the test splits of other data lists.

    Args:
        datalist: the training data list (training, validation, and maybe its own test splits).
        test_lists: name -> ``{"path": data list, "dataset_dir": its image folder}`` (or a
            :class:`DataList`). An entry with an empty path or folder is skipped (a message says
            which setting enables it). Each list's ``test`` split becomes split ``<name>``; its
            other test splits ``<name>_<split>``.
        check_images: check that every test image exists.
        datalist_options: other :class:`~custom.data.DataList` options of the test lists opened
            here (``on_bad_image``, ``allow_absolute_paths``, ``verify_images``).

    Raises:
        DataListError: a test list with other classes (or another class order) than the
            training list, a split name used twice, or a test patient that is in the training split.
    """

    def __init__(self, datalist: DataList, test_lists: Mapping[str, Mapping | DataList] | None = None,
                 check_images: bool = True, datalist_options: Mapping | None = None):
        self._base = datalist
        self._extra: dict[str, tuple[DataList, str]] = {}
        training_patients = self._patients(datalist, "training") if "training" in datalist.splits else set()
        for name, spec in (test_lists or {}).items():
            if isinstance(spec, DataList):
                test = spec
            else:
                path, folder = spec.get("path"), spec.get("dataset_dir")
                if not path or not folder:
                    print(f"test list '{name}' skipped: set its data list and image folder to evaluate on it",
                          flush=True)
                    continue
                test = DataList(path, folder, required_splits=(), check_images=check_images,
                                **(datalist_options or {}))
            if list(test.classes) != list(datalist.classes):
                raise DataListError(f"test list '{name}' ({test.path}) has classes {test.classes}, the training list "
                                    f"{datalist.path} has {datalist.classes}: build both with the same --scheme")
            for split in test.test_splits:
                key = name if split == "test" else f"{name}_{split}"
                if key in datalist.splits or key in self._extra:
                    raise DataListError(f"test list '{name}' ({test.path}): split name '{key}' is already used")
                leaked = training_patients & self._patients(test, split)
                if leaked:
                    raise DataListError(f"test list '{name}' ({test.path}): {len(leaked)} patient(s) of split "
                                        f"'{split}' are in the training split of {datalist.path}, "
                                        f"e.g. {sorted(leaked)[:5]}")
                self._extra[key] = (test, split)

    @property
    def problems(self) -> list[str]:
        """Problems of the training list and of the test lists (see :func:`custom.data.datalist.preflight_mode`)."""
        out = list(self._base.problems)
        for key, (test, inner) in self._extra.items():
            out += [f"test list '{key}' ({test.path}): {p}" for p in test.problems]
        return out

    def problems_message(self) -> str:
        problems = self.problems
        first = f"data list {self.path}: {problems[0]}"
        if len(problems) > 1:
            first += f" (and {len(problems) - 1} more problem(s), listed below)"
        return listing(first, problems[1:])

    @staticmethod
    def _patients(datalist: DataList, split: str) -> set[str]:
        # the raw items (``items()`` would build a label array per image of a 100k-image split)
        return {str(item["patient"]) for item in datalist.raw_items(split) if "patient" in item}

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_base", "_extra"):
            raise AttributeError(name)
        return getattr(self._base, name)

    @property
    def classes(self) -> list[str]:
        return self._base.classes

    @property
    def path(self) -> Path:
        return self._base.path

    @property
    def splits(self) -> list[str]:
        """Splits of the training list, then the test lists' splits."""
        return self._base.splits + list(self._extra)

    @property
    def test_splits(self) -> list[str]:
        """Non-empty test splits: the training list's own, then one per test list."""
        return self._base.test_splits + list(self._extra)

    def dataset_dir_of(self, split: str) -> Path:
        """Image folder of a split."""
        return self._extra[split][0].dataset_dir if split in self._extra else self._base.dataset_dir

    def items(self, split: str) -> list[dict]:
        """Items of a split (see :meth:`custom.data.DataList.items`)."""
        if split in self._extra:
            test, inner = self._extra[split]
            return test.items(inner)
        return self._base.items(split)

    def labels(self, split: str, key: str = "label") -> np.ndarray:
        """(N, C) uint8 labels of a split."""
        if split in self._extra:
            test, inner = self._extra[split]
            return test.labels(inner, key)
        return self._base.labels(split, key)

    def __len__(self) -> int:
        return len(self._base)

    @property
    def num_images(self) -> int:
        """The number of images of the training list and of every test list."""
        return self._base.num_images + sum(t.num_images for t in {id(t): t for t, _ in self._extra.values()}.values())

    def bad_images(self) -> list[tuple[str, int, Path, str]]:
        """Every missing or unreadable image of the training list and of every test list
        (see :meth:`custom.data.DataList.bad_images`; a test list's splits carry their name here)."""
        return self.inspect_images()[0]

    def inspect_images(self, image_size: int | None = None):
        """``(bad, degenerate)`` images of the training list and of every test list, each image decoded once
        (see :meth:`custom.data.DataList.inspect_images`; a test list's splits carry their name here)."""
        size = image_size or self._base.image_size
        bad, degenerate = self._base.inspect_images(size)
        for test in {id(t): t for t, _ in self._extra.values()}.values():
            names = {inner: key for key, (t, inner) in self._extra.items() if t is test}
            found = test.inspect_images(size)
            for kept, rows in zip((bad, degenerate), found):
                kept += [(names.get(split, f"{test.path.name}:{split}"), row, path, why)
                         for split, row, path, why in rows]
        return bad, degenerate

    def verify_images(self, skip: bool = False) -> None:
        """Decode every image of the training list and of every test list; stop naming all bad ones."""
        if skip:
            self._base.verify_images(skip=True)
            for test in {id(t): t for t, _ in self._extra.values()}.values():
                test.verify_images(skip=True)
            return
        bad = self.bad_images()
        if bad:
            raise FileNotFoundError(bad_images_message(self.path, self._base.dataset_dir, bad, self.num_images))


def real_datalist(path, dataset_dir, test_lists: Mapping[str, Mapping] | None = None, check_images: bool = True,
                  verify_images: bool = False, on_bad_image: str = "error", allow_absolute_paths: bool = False,
                  required_splits=("training", "validation"), on_degenerate_image: str = "warn",
                  image_size: int | None = None) -> DataListWithTests:
    """The data list of a real dataset with its test lists, as the dataset overlays build it.

    Takes every :class:`~custom.data.DataList` option (named here, so that a misspelt setting is
    refused), e.g. ``--datalist#on_bad_image skip`` with a dataset overlay.

    Args:
        path: the training data list.
        dataset_dir: the folder holding its images; required (the lists hold relative paths).
        test_lists: see :class:`DataListWithTests`.
        check_images: check that every image exists before training starts.
        verify_images: decode every image once before training (training list and test lists).
        on_bad_image: ``"error"`` or ``"skip"`` (drop missing or unreadable images, logged), for the
            training list and every test list.
        allow_absolute_paths: accept absolute image paths (training list and test lists).
        required_splits: the splits the training list must have.
        on_degenerate_image, image_size: ``"warn"`` or ``"refuse"`` images far smaller than ``image_size`` or
            constant (training list and test lists; see :class:`~custom.data.DataList`).
    """
    if dataset_dir in (None, ""):
        raise ValueError(f"set 'dataset_dir' to the folder holding the images of {path} "
                         "(e.g. --dataset_dir /data/nih/images); the data list holds paths relative to it")
    options = {"verify_images": verify_images, "on_bad_image": on_bad_image,
               "allow_absolute_paths": allow_absolute_paths, "on_degenerate_image": on_degenerate_image,
               "image_size": image_size}
    return DataListWithTests(DataList(path, dataset_dir, required_splits=required_splits, check_images=check_images,
                                      **options), test_lists, check_images=check_images, datalist_options=options)
