"""The test sets of a test report: splits of data lists named by the ``test_lists`` setting
(:func:`resolve_test_sets`), and the network's output column of each of their classes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from ..data.datalist import DataList


class TestSet(NamedTuple):
    """One test set: a split of a data list, and the name its output files carry."""

    name: str
    datalist: DataList
    split: str


def resolve_test_sets(test_lists, datalist: DataList | None = None) -> list[TestSet]:
    """The test sets named by a ``test_lists`` setting.

    Args:
        test_lists: ``None`` or empty for every test split of ``datalist``; else a list, or a
            dict ``name -> entry``, of entries, each one of: a data list path (every test split
            of it: non-empty splits other than training and validation), a
            :class:`~custom.data.DataList`, or a dict ``{"path": ..., "dataset_dir": ...,
            "splits": [...], "name": ...}`` (only ``path`` is required). Test-only data lists
            (empty or missing training and validation splits) are accepted.
        datalist: the training data list (the default, and the source of the class names).

    Returns:
        test sets; each is named after its split for the training data list, else after the
        entry's name (dict key, ``name`` or the file name without ``.json``/``.json.gz``), with
        ``_<split>`` appended when the entry has more than one test split.

    Raises:
        ValueError: an entry that is none of the above, a data list without test split, a
            requested split that is missing, or two test sets with the same name.
    """
    if not test_lists:
        if datalist is None:
            raise ValueError("no test data list given and no training data list to take the test splits from")
        return [TestSet(split, datalist, split) for split in datalist.test_splits]
    entries = list(test_lists.items()) if isinstance(test_lists, Mapping) else [(None, e) for e in test_lists]
    out: list[TestSet] = []
    for key, entry in entries:
        splits, name = None, key
        if isinstance(entry, (str, Path)):
            entry = DataList(entry, required_splits=(), check_images=True)
        elif isinstance(entry, Mapping):
            unknown = set(entry) - {"path", "dataset_dir", "splits", "name"}
            if "path" not in entry or unknown:
                raise ValueError(f"test list entry {dict(entry)} needs a 'path' and may only have 'dataset_dir', "
                                 "'splits' and 'name'")
            splits, name = entry.get("splits"), entry.get("name") or key
            entry = DataList(entry["path"], entry.get("dataset_dir"), required_splits=())
        if not isinstance(entry, DataList):
            raise ValueError("test list entry must be a data list path, a dict with 'path' or a custom.DataList, got "
                             f"{type(entry).__name__}: {entry!r}")
        splits = list(splits) if splits else entry.test_splits
        if not splits:
            raise ValueError(f"data list {entry.path} has no test split (a non-empty split other than training and "
                             "validation)")
        for split in splits:
            entry.labels(split)  # KeyError naming the file and split when missing
        if entry is datalist and name is None:
            out += [TestSet(split, entry, split) for split in splits]
            continue
        name = name or _stem(entry.path)
        out += [TestSet(name if len(splits) == 1 else f"{name}_{split}", entry, split) for split in splits]
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two test sets are named {dupes}: give the entries distinct names (a dict name -> entry, or "
                         "'name')")
    return out


def _stem(path: Path) -> str:
    name = Path(path).name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def class_columns(test_classes: Sequence[str], model_classes: Sequence[str], where) -> list[int]:
    """Output column of the network for every class of a test list (matched by name)."""
    missing = [c for c in test_classes if c not in model_classes]
    if missing:
        raise ValueError(f"{where}: classes {missing} are not outputs of the model "
                         f"(its classes: {list(model_classes)})")
    return [list(model_classes).index(c) for c in test_classes]
