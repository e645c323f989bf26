"""Data lists: reading, validating and handing out the items of each split.

A data list is JSON (optionally gzipped) in MONAI's decathlon-like style::

    {"classes": ["Atelectasis", ..., "No Finding"],
     "training":   [{"image": "relative/path.png", "label": [0, 1, ...], "patient": "id"}, ...],
     "validation": [...], "test": [...], "<other test split>": [...]}

Image paths are relative to ``dataset_dir`` and must stay inside it, also once links are followed
(absolute paths, and links that lead out of it, only with ``allow_absolute_paths``); an image is
listed once in the whole list (two splits sharing an image would leak it). Every item handed to a
dataset carries its position in its split as ``index``: that is the row of the NVUM memory for
training images (:data:`INDEX_KEY`).

A list with a top-level ``store`` entry is a prepared store's list (``python -m custom.cli prepare``,
:mod:`custom.data.store`): its images are rows ``images.npy#<row>`` of the store beside it, checked when the
list is opened (size, source list, finished), not decoded again.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..files import is_inside
from ..files import read_json as read_file
from .messages import DEGENERATE_REFUSED, DEGENERATE_WARNED, MAX_LISTED, bad_images_message, listing

logger = logging.getLogger(__name__)

#: what to do with a missing or unreadable image.
BAD_IMAGE_POLICIES = ("error", "skip")
#: what to do with a degenerate image (far smaller than the network input, or constant), in a data list
#: and at inference (``degenerate_images`` of :class:`custom.serving.inference.InferenceDataset`).
DEGENERATE_IMAGE_POLICIES = ("warn", "refuse")
#: keys an item of a data list may have.
ITEM_KEYS = {"image", "label", "patient", "clean_label"}
#: keys an item must have.
REQUIRED_ITEM_KEYS = {"image", "label"}
#: top-level keys that are not splits.
META_KEYS = {"classes", "generator", "summary", "scheme", "source", "store"}

#: the key of an item's position in its split: the row of the NVUM memory for training images.
INDEX_KEY = "index"

# True while `check` builds a data list: it reports all of the list's problems and every bad image itself
_PREFLIGHT = contextvars.ContextVar("nvum_datalist_preflight", default=False)


@contextlib.contextmanager
def preflight_mode():
    """Inside the block, data lists are built for the pre-flight check: their problems (bad rows,
    paths, duplicates, leaked patients, empty splits) are kept in :attr:`DataList.problems` instead
    of stopping, and their images are not looked at (``check_images``, ``verify_images`` and
    ``on_bad_image`` are recorded, not applied), so that ``check`` can report every problem of the
    list and then every missing and unreadable image (:meth:`DataList.bad_images`) in one run."""
    token = _PREFLIGHT.set(True)
    try:
        yield
    finally:
        _PREFLIGHT.reset(token)


class DataListError(ValueError):
    """A data list that cannot be used; the message names the file, split, row and key."""


def read_json(path) -> dict:
    """A data list file's content (``.json`` or ``.json.gz``, :func:`custom.files.read_json`); invalid JSON raises
    :class:`DataListError` naming the file."""
    try:
        return read_file(path, "data list")
    except ValueError as e:
        raise DataListError(str(e)) from None


class DataList:
    """A validated data list.

    Args:
        path: the data list file (``.json`` or ``.json.gz``).
        dataset_dir: folder the image paths are relative to; defaults to the data list's folder.
        required_splits: splits that must be present and non-empty.
        check_images: check that every image file exists (fast: one ``stat`` per image).
        verify_images: also decode every image once (Pillow) to find truncated or corrupt files
            before training starts (slower: one full read per image, in threads, with a
            progress bar). Implied by ``on_bad_image="skip"``.
        on_bad_image: ``"error"`` (default): a missing or unreadable image stops with its name;
            ``"skip"``: such items are dropped from their split before anything is built on it
            (the memory has a row per *kept* training image), and their number and names are
            logged and kept in :attr:`skipped`.
        allow_absolute_paths: accept absolute image paths, and relative ones that are (or go through)
            a link leading out of ``dataset_dir`` (default: both refused; relative paths that leave
            ``dataset_dir`` with ``..`` are always refused). The link check resolves each path
            (``os.path.realpath``; one ``lstat`` per image, folders resolved once), it reads no image.
        on_degenerate_image: what to do with a degenerate image, one that decodes but is a side
            shorter than ``image_size / 4`` or constant (max == min; see
            :func:`custom.data.transforms.degenerate_reason`): ``"warn"`` (default): ``check`` warns,
            naming them, and training uses them (it logs them when it decodes the images anyway:
            ``verify_images`` or ``on_bad_image="skip"``); ``"refuse"``: every image is decoded once
            before training (as with ``verify_images``) and degenerate ones stop it, all named
            (:class:`DataListError`); ``check`` fails on them.
        image_size: the network's input side, for the size rule (``"image_size": "@image_size"`` in a
            config); required with ``on_degenerate_image="refuse"``. ``check`` uses the config's
            ``image_size`` when it is not given.

    Raises:
        FileNotFoundError: missing data list, dataset folder or images (all named, with their count).
        DataListError: unknown keys, wrong label lengths, non-binary labels, empty splits,
            an image listed twice (in one split or in two), image paths outside ``dataset_dir``
            (``..``, absolute, or a link leading out), or a patient in two splits; every such problem
            of the list is named in one message. Degenerate images with ``on_degenerate_image="refuse"``.
    """

    def __init__(
        self, path, dataset_dir=None, required_splits=("training", "validation"), check_images: bool = True,
        verify_images: bool = False, on_bad_image: str = "error", allow_absolute_paths: bool = False,
        on_degenerate_image: str = "warn", image_size: int | None = None,
    ):  # fmt: skip
        from ..flags import as_bool

        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        if on_degenerate_image not in DEGENERATE_IMAGE_POLICIES:
            raise ValueError(f"on_degenerate_image must be one of {DEGENERATE_IMAGE_POLICIES}, got "
                             f"{on_degenerate_image!r}")
        if image_size not in (None, "") and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                             or image_size < 1):
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
        self.image_size = int(image_size) if image_size not in (None, "") else None
        if on_degenerate_image == "refuse" and self.image_size is None:
            raise ValueError("on_degenerate_image='refuse' needs the network's input size for the size rule: add "
                             "\"image_size\": \"@image_size\" to the custom.DataList")
        self.on_degenerate_image = on_degenerate_image
        self.path = Path(path)
        self.on_bad_image = on_bad_image
        self.allow_absolute_paths = as_bool(allow_absolute_paths, "allow_absolute_paths")
        self.skipped: list[tuple[str, str, str]] = []  # (split, image, reason)
        raw = read_json(self.path)
        if not isinstance(raw, dict) or "classes" not in raw:
            raise DataListError(f"data list {self.path} needs a top-level 'classes' list of class names")
        self.classes = list(raw["classes"])
        bad = [c for c in self.classes if not isinstance(c, str) or not c.strip()]
        if not self.classes or bad:
            raise DataListError(f"data list {self.path}: 'classes' must be a non-empty list of class names, got "
                                f"{raw['classes']}")
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise DataListError(f"data list {self.path}: class name(s) {twice} listed more than once in 'classes'")
        self.meta = {k: raw[k] for k in META_KEYS if k in raw}
        self.dataset_dir = Path(dataset_dir) if dataset_dir not in (None, "") else self.path.parent
        self.store = raw.get("store")
        if self.store is not None:  # a prepared store's list: its images are rows of the store beside it
            from .store import check_store

            self.dataset_dir = check_store(self.path, self.store, self.image_size)
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.dataset_dir} (set 'dataset_dir' to the folder "
                                    "holding the images)")
        self._splits = {k: v for k, v in raw.items() if k not in META_KEYS}
        self._real_dir = os.path.realpath(self.dataset_dir)
        self._real_parents: dict[str, str] = {}  # folder of image paths -> its resolved path
        self._bad_paths: set[tuple[str, int]] = set()  # (split, row) whose image path is refused: never read
        problems: list[str] = []
        seen: dict[str, tuple[str, int]] = {}  # normalised image path -> (split, row), over all splits
        for name, items in self._splits.items():
            problems += self._validate_split(name, items, seen)
        problems += self._patient_problems()
        problems += [f"no items in required split '{name}'" for name in required_splits if not self._splits.get(name)]
        self.problems = problems
        if _PREFLIGHT.get():
            return
        if problems:
            raise DataListError(self.problems_message())
        if self.store is not None:
            return  # every row was decoded by `prepare`; the unreadable ones are in its errors file
        if on_bad_image == "skip" or verify_images or on_degenerate_image == "refuse":
            self.verify_images(skip=on_bad_image == "skip")
        elif check_images:
            self._check_images()

    def problems_message(self) -> str:
        """The error for :attr:`problems`: the first on the first line with their count, then the others."""
        first = f"data list {self.path}: {self.problems[0]}"
        if len(self.problems) > 1:
            first += f" (and {len(self.problems) - 1} more problem(s), listed below)"
        return listing(first, self.problems[1:])

    @property
    def splits(self) -> list[str]:
        """Names of the splits present, in file order."""
        return list(self._splits)

    @property
    def test_splits(self) -> list[str]:
        """Non-empty splits other than training and validation (clean test sets)."""
        return [s for s, items in self._splits.items() if s not in ("training", "validation") and items]

    def items(self, split: str) -> list[dict]:
        """Items of a split, ready for MONAI datasets.

        Returns:
            list of dicts with ``image`` (absolute path, str), ``label`` (float32 array (C,)),
            ``index`` (int, position in the split) and ``patient`` (str, when given).
        """
        out = []
        for i, item in enumerate(self.raw_items(split)):
            d = {"image": str(self.dataset_dir / item["image"]), "label": np.asarray(item["label"], dtype=np.float32),
                 INDEX_KEY: i}
            if "patient" in item:
                d["patient"] = str(item["patient"])
            out.append(d)
        return out

    def labels(self, split: str, key: str = "label") -> np.ndarray:
        """(N, C) uint8 array of a split's labels (``key="clean_label"`` for the clean ones where known)."""
        items = self.raw_items(split)
        if items and key not in items[0]:
            raise KeyError(f"split '{split}' of {self.path} has no '{key}'")
        return np.asarray([item[key] for item in items], dtype=np.uint8).reshape(len(items), len(self.classes))

    def __len__(self) -> int:
        return len(self.raw_items("training"))

    def raw_items(self, split: str) -> list[dict]:
        """The items of a split as stored in the data list (not copied); :class:`KeyError` naming the splits
        when there is no such split."""
        if split not in self._splits:
            raise KeyError(f"data list {self.path} has no split '{split}'; it has {self.splits}")
        return self._splits[split]

    def _validate_split(self, name: str, items, seen: dict) -> list[str]:
        """Problems of one split, as ``split '<name>', row <r> (<image>): <what>`` lines."""
        if not isinstance(items, list):
            return [f"'{name}' must be a list of items, or one of the keys {sorted(META_KEYS)}"]
        n_classes = len(self.classes)
        problems = []
        for row, item in enumerate(items):
            where = f"split '{name}', row {row}"
            if not isinstance(item, dict):
                problems.append(f"{where}: an item must be an object with keys {sorted(REQUIRED_ITEM_KEYS)}")
                continue
            unknown = set(item) - ITEM_KEYS
            if unknown:
                problems.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(ITEM_KEYS)}")
            missing = REQUIRED_ITEM_KEYS - set(item)
            if missing:
                problems.append(f"{where}: missing key(s) {sorted(missing)}")
                continue
            image = item["image"]
            path_problem = self._path_problem(image)
            if path_problem:
                problems.append(f"{where}: {path_problem}")
                self._bad_paths.add((name, row))
                continue
            for key in ("label", "clean_label"):
                if key in item:
                    value = item[key]
                    if not isinstance(value, list) or len(value) != n_classes:
                        length = len(value) if isinstance(value, list) else type(value).__name__
                        problems.append(f"{where} ({image}): '{key}' has length {length}, expected {n_classes} (one "
                                        "per class)")
                    elif any(v not in (0, 1) for v in value):
                        problems.append(f"{where} ({image}): '{key}' must hold only 0/1 values, got {value}")
            key = os.path.normpath(image)
            if key in seen:
                other_split, other_row = seen[key]
                if other_split == name:
                    problems.append(f"{where}: image {image} is listed twice (also row {other_row})")
                else:
                    problems.append(f"{where}: image {image} is also in split '{other_split}', row {other_row}; an "
                                    "image in two splits leaks what the network trained on into what it is judged on")
            else:
                seen[key] = (name, row)
        return problems

    def _path_problem(self, image) -> str | None:
        """Why an item's ``image`` is not a path inside ``dataset_dir`` (``None`` when it is)."""
        if not isinstance(image, str) or not image.strip():
            return f"'image' must be a non-empty path relative to dataset_dir, got {image!r}"
        if os.path.isabs(image):
            if self.allow_absolute_paths:
                return None
            return (f"image path {image} is absolute; image paths are relative to dataset_dir ({self.dataset_dir}) "
                    "(set 'allow_absolute_paths': true in the custom.DataList to accept absolute paths)")
        normalised = os.path.normpath(image)
        if normalised == os.pardir or normalised.startswith(os.pardir + os.sep):
            return f"image path {image} leaves dataset_dir ({self.dataset_dir}); paths must stay inside it"
        if self.allow_absolute_paths:
            return None
        target = self._link_target(image)
        if target is not None:
            return (f"image path {image} {target[0]} that leaves dataset_dir ({self.dataset_dir}): it points to "
                    f"{target[1]} (set 'allow_absolute_paths': true in the custom.DataList to follow such links)")
        return None

    def _link_target(self, image: str) -> tuple[str, str] | None:
        """``(what, target)`` when ``image`` (relative) resolves, links followed, outside ``dataset_dir``."""
        joined = os.path.join(self.dataset_dir, image)
        parent, name = os.path.split(joined)
        real_parent = self._real_parents.get(parent)
        if real_parent is None:
            real_parent = self._real_parents[parent] = os.path.realpath(parent)
        if os.path.islink(joined):
            target, what = os.path.realpath(joined), "is a link"
        else:
            target, what = os.path.join(real_parent, name), "goes through a linked folder"
        return None if is_inside(target, self._real_dir) else (what, target)

    def _patient_problems(self) -> list[str]:
        where = defaultdict(set)
        for split, items in self._splits.items():
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and "patient" in item:
                    where[str(item["patient"])].add(split)
        leaked = {p: sorted(s) for p, s in where.items() if len(s) > 1}
        if not leaked:
            return []
        example = ", ".join(f"{p} in {s}" for p, s in list(leaked.items())[:5])
        return [f"{len(leaked)} patient(s) appear in more than one split: {example}"]

    def _check_images(self) -> None:
        """Every image file exists (one ``stat`` each); all missing ones are named, with their count."""
        missing = [(split, row, self.dataset_dir / item["image"]) for split, items in self._splits.items()
                   for row, item in enumerate(items) if not (self.dataset_dir / item["image"]).is_file()]
        if missing:
            raise FileNotFoundError(self._bad_images_message([(s, r, p, "file not found") for s, r, p in missing],
                                                             "not found"))

    def _image_jobs(self) -> list[tuple[str, int, Path]]:
        """``(split, row, path)`` of every item with an image path (all items, unless :attr:`problems` name some)."""
        return [(split, row, self.dataset_dir / item["image"])
                for split, items in self._splits.items() if isinstance(items, list)
                for row, item in enumerate(items)
                if isinstance(item, dict) and isinstance(item.get("image"), str) and item["image"]
                and (split, row) not in self._bad_paths]

    @property
    def num_images(self) -> int:
        """The number of images of all splits."""
        return len(self._image_jobs())

    def bad_images(self) -> list[tuple[str, int, Path, str]]:
        """Decode every image once (Pillow, in threads, with a progress bar for large lists).

        Returns:
            ``(split, row, path, reason)`` of every missing or unreadable image, in list order.
        """
        return self.inspect_images()[0]

    def inspect_images(self, image_size: int | None = None):
        """Decode every image once (Pillow, in threads, with a progress bar for large lists) and find the
        unreadable and the degenerate ones in that one pass (images whose path is refused are not read).

        Args:
            image_size: the network's input side for the size rule (default: :attr:`image_size`).

        Returns:
            ``(bad, degenerate)``: ``(split, row, path, reason)`` of every missing or unreadable image, and
            of every degenerate one (:func:`custom.data.transforms.degenerate_reason`), in list order.
        """
        from .transforms import inspect_images

        if self.store is not None:  # decoded by `prepare`, which left the unreadable images out
            return [], []
        jobs = self._image_jobs()
        found = inspect_images([path for _, _, path in jobs], image_size or self.image_size)
        bad = [(split, row, path, why) for (split, row, path), (why, _) in zip(jobs, found) if why is not None]
        degenerate = [(split, row, path, why) for (split, row, path), (_, why) in zip(jobs, found) if why is not None]
        return bad, degenerate

    def _bad_images_message(self, bad, what: str = "missing or unreadable", limit: int | None = MAX_LISTED) -> str:
        return bad_images_message(self.path, self.dataset_dir, bad, self.num_images, what, limit)

    def verify_images(self, skip: bool = False) -> None:
        """Decode every image once; stop naming the bad ones, or drop them with ``skip`` (see ``on_bad_image``);
        then stop naming the degenerate ones (``on_degenerate_image="refuse"``) or log them."""
        bad, degenerate = self.inspect_images()
        if bad and not skip:
            raise FileNotFoundError(self._bad_images_message(bad))
        if degenerate and self.on_degenerate_image == "refuse":
            raise DataListError(self._bad_images_message(degenerate, DEGENERATE_REFUSED))
        if degenerate:
            logger.warning("%s", self._bad_images_message(degenerate, DEGENERATE_WARNED))
        if not bad:
            return
        self.skipped = [(split, self._splits[split][row]["image"], why) for split, row, _, why in bad]
        drop = {(split, row) for split, row, _, _ in bad}
        for split in self._splits:
            self._splits[split] = [item for row, item in enumerate(self._splits[split]) if (split, row) not in drop]
        logger.warning("%s", self._bad_images_message(bad, "missing or unreadable and skipped (on_bad_image='skip')"))
