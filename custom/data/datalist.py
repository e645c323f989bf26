"""Data lists: reading, validating and handing out the items of each split.

A data list is JSON (optionally gzipped) in MONAI's decathlon-like style::

    {"classes": ["Atelectasis", ..., "No Finding"],
     "training":   [{"image": "relative/path.png", "label": [0, 1, ...], "patient": "id"}, ...],
     "validation": [...], "test": [...], "<other test split>": [...]}

Image paths are relative to ``dataset_dir``. Every item handed to a dataset carries its position
in its split as ``index``: that is the row of the NVUM memory for training images.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: what to do with a missing or unreadable image.
BAD_IMAGE_POLICIES = ("error", "skip")
#: keys an item of a data list may have.
ITEM_KEYS = {"image", "label", "patient", "clean_label"}
#: keys an item must have.
REQUIRED_ITEM_KEYS = {"image", "label"}
#: top-level keys that are not splits.
META_KEYS = {"classes", "generator", "summary", "scheme", "source"}


class DataListError(ValueError):
    """A data list that cannot be used; the message names the file, split, row and key."""


def read_json(path) -> dict:
    """Read a ``.json`` or ``.json.gz`` file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"data list not found: {path}") from None
    except (json.JSONDecodeError, OSError, EOFError) as e:
        raise DataListError(f"data list {path} is not valid JSON: {e}") from None


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

    Raises:
        FileNotFoundError: missing data list, dataset folder or images (the first few are named).
        DataListError: unknown keys, wrong label lengths, non-binary labels, empty splits,
            duplicate images or a patient in two splits.
    """

    def __init__(
        self, path, dataset_dir=None, required_splits=("training", "validation"), check_images: bool = True,
        verify_images: bool = False, on_bad_image: str = "error",
    ):  # fmt: skip
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.path = Path(path)
        self.skipped: list[tuple[str, str, str]] = []  # (split, image, reason)
        raw = read_json(self.path)
        if not isinstance(raw, dict) or "classes" not in raw:
            raise DataListError(f"data list {self.path} needs a top-level 'classes' list of class names")
        self.classes = list(raw["classes"])
        bad = [c for c in self.classes if not isinstance(c, str) or not c.strip()]
        if not self.classes or bad:
            raise DataListError(f"data list {self.path}: 'classes' must be a non-empty list of class names, got {raw['classes']}")
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise DataListError(f"data list {self.path}: class name(s) {twice} listed more than once in 'classes'")
        self.meta = {k: raw[k] for k in META_KEYS if k in raw}
        self.dataset_dir = Path(dataset_dir) if dataset_dir not in (None, "") else self.path.parent
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.dataset_dir} (set 'dataset_dir' to the folder holding the images)")
        self._splits = {k: v for k, v in raw.items() if k not in META_KEYS}
        for name, items in self._splits.items():
            self._validate_split(name, items)
        self._check_patients()
        if on_bad_image == "skip" or verify_images:
            self.verify_images(skip=on_bad_image == "skip")
        elif check_images:
            self._check_images()
        for name in required_splits:
            if not self._splits.get(name):
                raise DataListError(f"data list {self.path} has no items in required split '{name}'")

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
        for i, item in enumerate(self._get(split)):
            d = {"image": str(self.dataset_dir / item["image"]), "label": np.asarray(item["label"], dtype=np.float32), "index": i}
            if "patient" in item:
                d["patient"] = str(item["patient"])
            out.append(d)
        return out

    def labels(self, split: str, key: str = "label") -> np.ndarray:
        """(N, C) uint8 array of a split's labels (``key="clean_label"`` for the clean ones where known)."""
        items = self._get(split)
        if items and key not in items[0]:
            raise KeyError(f"split '{split}' of {self.path} has no '{key}'")
        return np.asarray([item[key] for item in items], dtype=np.uint8).reshape(len(items), len(self.classes))

    def __len__(self) -> int:
        return len(self._get("training"))

    def _get(self, split: str) -> list[dict]:
        if split not in self._splits:
            raise KeyError(f"data list {self.path} has no split '{split}'; it has {self.splits}")
        return self._splits[split]

    def _validate_split(self, name: str, items) -> None:
        if not isinstance(items, list):
            raise DataListError(f"data list {self.path}: '{name}' must be a list of items, or one of the keys {sorted(META_KEYS)}")
        n_classes = len(self.classes)
        seen = {}
        for row, item in enumerate(items):
            where = f"data list {self.path}, split '{name}', row {row}"
            if not isinstance(item, dict):
                raise DataListError(f"{where}: an item must be an object with keys {sorted(REQUIRED_ITEM_KEYS)}")
            unknown = set(item) - ITEM_KEYS
            if unknown:
                raise DataListError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(ITEM_KEYS)}")
            missing = REQUIRED_ITEM_KEYS - set(item)
            if missing:
                raise DataListError(f"{where}: missing key(s) {sorted(missing)}")
            for key in ("label", "clean_label"):
                if key in item:
                    value = item[key]
                    if not isinstance(value, list) or len(value) != n_classes:
                        length = len(value) if isinstance(value, list) else type(value).__name__
                        raise DataListError(f"{where} ({item['image']}): '{key}' has length {length}, expected {n_classes} (one per class)")
                    if any(v not in (0, 1) for v in value):
                        raise DataListError(f"{where} ({item['image']}): '{key}' must hold only 0/1 values, got {value}")
            if item["image"] in seen:
                raise DataListError(f"{where}: image {item['image']} is listed twice (also row {seen[item['image']]})")
            seen[item["image"]] = row

    def _check_patients(self) -> None:
        where = defaultdict(set)
        for split, items in self._splits.items():
            for item in items:
                if "patient" in item:
                    where[str(item["patient"])].add(split)
        leaked = {p: sorted(s) for p, s in where.items() if len(s) > 1}
        if leaked:
            example = ", ".join(f"{p} in {s}" for p, s in list(leaked.items())[:5])
            raise DataListError(f"data list {self.path}: {len(leaked)} patient(s) appear in more than one split: {example}")

    def _check_images(self) -> None:
        missing = [self.dataset_dir / item["image"] for items in self._splits.values() for item in items if not (self.dataset_dir / item["image"]).is_file()]
        if missing:
            shown = "\n  ".join(str(p) for p in missing[:5])
            raise FileNotFoundError(f"{len(missing)} image(s) of data list {self.path} not found, e.g.\n  {shown}")


    def verify_images(self, skip: bool = False) -> None:
        """Decode every image once; stop naming the bad ones, or drop them with ``skip`` (see ``on_bad_image``)."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        from .transforms import check_image

        jobs = [(split, item["image"]) for split, items in self._splits.items() for item in items]
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            reasons = list(tqdm(pool.map(lambda job: check_image(self.dataset_dir / job[1]), jobs), total=len(jobs),
                                desc="checking images", unit="img", disable=len(jobs) < 2000, mininterval=2))  # fmt: skip
        bad = [(split, image, why) for (split, image), why in zip(jobs, reasons) if why is not None]
        if not bad:
            return
        shown = "\n  ".join(f"{self.dataset_dir / image} ({split}): {why}" for split, image, why in bad[:10])
        if not skip:
            raise FileNotFoundError(f"{len(bad)} image(s) of data list {self.path} are missing or unreadable, e.g.\n  {shown}")
        drop = {(split, image) for split, image, _ in bad}
        for split in self._splits:
            self._splits[split] = [item for item in self._splits[split] if (split, item["image"]) not in drop]
        self.skipped = bad
        logger.warning("skipped %d missing or unreadable image(s) of data list %s (on_bad_image='skip'):\n  %s%s",
                       len(bad), self.path, shown, "\n  ..." if len(bad) > 10 else "")  # fmt: skip
