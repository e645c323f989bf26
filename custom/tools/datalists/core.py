"""What every data-list builder shares: label vectors from harmonised classes, images present under a folder,
splits, checks, and the list with its summary (:mod:`.output` writes and prints them)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ...labels import NO_FINDING
from . import harmonise

SPLITS = ("training", "validation", "test")


class BuildError(ValueError):
    """A data list that cannot be built; the message names the file, row, column or image."""


@dataclass
class Dropped:
    """Rows removed while building, counted by reason, in the order the reasons were met."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + int(n)

    def keep(self, frame: pd.DataFrame, mask, reason: str) -> pd.DataFrame:
        """Rows of ``frame`` where ``mask`` holds; the others are counted under ``reason``."""
        mask = np.asarray(mask, dtype=bool)
        self.add(reason, int((~mask).sum()))
        return frame[mask]


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path) -> None:
    """Stop with the missing column names and the columns the file has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BuildError(f"{path}: missing required column(s) {missing}; the file has {list(frame.columns)}")


def read_table(path, columns: Sequence[str] | None = None, usecols: Sequence[str] | None = None) -> pd.DataFrame:
    """A CSV (optionally gzipped) with the required ``columns`` checked.

    Args:
        path: the file.
        columns: required columns (a clear error names the missing ones).
        usecols: read only these columns (plus ``columns``); ``None`` reads all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    try:
        header = pd.read_csv(path, nrows=0)
        if columns:
            require_columns(header, columns, path)
        wanted = None if usecols is None else [c for c in header.columns if c in set(usecols) | set(columns or ())]
        frame = pd.read_csv(path, low_memory=False, usecols=wanted)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as e:
        raise BuildError(f"{path}: not a readable CSV table: {e}") from None
    return frame


def positives_from_terms(terms: pd.Series, source: str) -> tuple[pd.DataFrame, Counter]:
    """Classes of each row from its list of source terms, and the terms that map to no class.

    Args:
        terms: one list of terms per row.
        source: a :data:`harmonise.TABLE` source key.

    Returns:
        (bool frame, one column per class of the source, aligned with ``terms``;
        Counter term -> number of rows holding it, for the terms that map to no class).
    """
    classes = list(harmonise.synonyms(source))
    column = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(terms), len(classes)), dtype=bool)
    cache: dict[str, tuple] = {}
    unmapped: Counter = Counter()
    for i, row_terms in enumerate(terms):
        for term in row_terms:
            if term not in cache:
                cache[term] = tuple(column[c] for c in harmonise.term_classes(term, source))
            cols = cache[term]
            if cols:
                matrix[i, list(cols)] = True
            else:
                unmapped[term] += 1
    return pd.DataFrame(matrix, index=terms.index, columns=classes), unmapped


def positives_from_text(text: pd.Series, source: str) -> pd.DataFrame:
    """Classes of each row by substring matching of the source's synonyms in ``text`` (paper mode).

    Returns:
        bool frame, one column per class of the source, aligned with ``text``.
    """
    text = text.fillna("").astype(str)
    hits = {}
    for cls, patterns in harmonise.synonyms(source).items():
        if cls == NO_FINDING:
            continue
        mask = np.zeros(len(text), dtype=bool)
        for p in patterns:
            mask |= text.str.contains(p, regex=False).to_numpy()
        hits[cls] = mask
    return pd.DataFrame(hits, index=text.index, columns=list(hits))


def positives_from_columns(positive: pd.DataFrame, source: str) -> tuple[pd.DataFrame, Counter]:
    """Classes of each row from positive (True) cells of the source's label columns.

    Returns:
        (bool frame, one column per class of the source; Counter column -> positive rows, for the
        label columns the table does not know).
    """
    table = harmonise.synonyms(source)
    out = pd.DataFrame(
        {
            c: positive.reindex(columns=[s for s in syns if s in positive.columns], fill_value=False).any(axis=1)
            for c, syns in table.items()
        },
        index=positive.index,
    )
    known = {s for syns in table.values() for s in syns}
    unmapped = Counter({c: int(positive[c].sum()) for c in positive.columns if c not in known and positive[c].any()})
    return out, unmapped


def count_unmapped(terms: pd.Series, source: str) -> Counter:
    """Rows holding each term that maps to no class (paper-mode sources included)."""
    return positives_from_terms(terms, source)[1]


@dataclass
class Labelled:
    """Rows with their label vectors over a scheme, after the scheme's drops."""

    frame: pd.DataFrame  # image, patient, (split), label (list of 0/1)
    classes: list[str]
    out_of_scheme: Counter  # class -> images dropped because positive for it


def apply_scheme(frame: pd.DataFrame, positives: pd.DataFrame, source: str, scheme: str, dropped: Dropped, *,
                 drop_out_of_scheme: bool = True, require_positive: bool = True) -> Labelled:
    """Label vectors over ``scheme`` from each row's harmonised classes.

    Args:
        frame: the rows (``image``, ``patient``, ``split``, ...).
        positives: bool frame aligned with ``frame``, one column per vocabulary class.
        source: the :data:`harmonise.TABLE` source the classes came from.
        scheme: ``nih14`` or ``chexpert8``.
        dropped: where dropped rows are counted.
        drop_out_of_scheme: drop rows positive for a vocabulary class outside the scheme
            (counted under one reason; the per-class counts are returned).
        require_positive: drop rows with no positive label in the scheme.

    For the free-text sources (:data:`harmonise.DERIVED_NO_FINDING`) No Finding is derived:
    positive when no class of the source's vocabulary is.
    """
    classes = harmonise.scheme_classes(scheme)
    positives = positives.copy()
    if source in harmonise.DERIVED_NO_FINDING:
        positives[NO_FINDING] = ~positives.drop(columns=[NO_FINDING], errors="ignore").any(axis=1)
    outside = [c for c in positives.columns if c not in set(classes)]
    out_counts: Counter = Counter()
    if drop_out_of_scheme and outside:
        bad = positives[outside].any(axis=1).to_numpy()
        out_counts = Counter({c: int(n) for c, n in positives.loc[bad, outside].sum().items() if n})
        dropped.add(f"positive for a class outside {scheme} ({', '.join(sorted(out_counts))})", int(bad.sum()))
        frame, positives = frame[~bad], positives[~bad]
    labels = positives.reindex(columns=classes, fill_value=False).to_numpy(dtype=np.uint8)
    if require_positive:
        has = labels.any(axis=1)
        frame, labels = frame[has], labels[has]
        dropped.add(f"no positive label in {scheme}", int((~has).sum()))
    frame = frame.copy()
    frame["label"] = labels.tolist()
    return Labelled(frame=frame, classes=classes, out_of_scheme=out_counts)


def find_images(images: pd.Series, dataset_dir, layouts: Sequence[str] = ("",)) -> pd.Series:
    """Where each image is under ``dataset_dir``: its path relative to that folder, or ``None``.

    Args:
        images: image paths (relative, as the data list would hold them).
        dataset_dir: the folder to look in.
        layouts: sub-folders to look in, in order, as glob patterns relative to ``dataset_dir``
            (``""``: the folder itself); the first one holding the image wins.
    """
    root = Path(dataset_dir)
    found = pd.Series(None, index=images.index, dtype=object)
    for layout in layouts:
        folders = [root] if layout in ("", ".") else sorted(p for p in root.glob(layout) if p.is_dir())
        for folder in folders:
            todo = found.isna().to_numpy()
            if not todo.any():
                return found
            names = images[todo]
            if names.str.contains("/", regex=False).any():
                hit = names.map(lambda n, f=folder: (f / n).is_file()).to_numpy(dtype=bool)
            else:  # bare file names: one listing of the folder instead of a stat per image
                with os.scandir(folder) as entries:
                    present = {e.name for e in entries if e.is_file()}
                hit = names.isin(present).to_numpy()
            rel = folder.relative_to(root).as_posix()
            found[names.index[hit]] = names[hit] if rel == "." else rel + "/" + names[hit]
    return found


def keep_found(labelled: Labelled, dataset_dir, dropped: Dropped, layouts: Sequence[str] = ("",)) -> Labelled:
    """The rows whose image is under ``dataset_dir`` (see :func:`find_images`), with the image path
    relative to that folder; the others are counted as not found.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        BuildError: no image of the list is there (naming the folder and where it looked).
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (--dataset_dir: the folder holding the images)")
    frame = labelled.frame
    found = find_images(frame["image"], root, layouts)
    present = found.notna().to_numpy()
    if len(frame) and not present.any():
        where = ", ".join(f"{root / layout.replace('[0-9]', 'N')}/<image>" if layout else f"{root}/<image>"
                          for layout in layouts)
        raise BuildError(f"none of the {len(frame):,} images of the list was found under {root}: looked at {where} "
                         f"(e.g. {frame['image'].iloc[0]}); set --dataset_dir to the folder holding the images")
    frame = dropped.keep(frame, present, f"image not found under {root}").copy()
    frame["image"] = found[present].to_numpy()
    return Labelled(frame=frame, classes=labelled.classes, out_of_scheme=labelled.out_of_scheme)


def other_match(labelled: Labelled, match: str) -> dict:
    """Images and positives per class the other match mode gives (printed beside the build's)."""
    matrix = np.asarray(labelled.frame["label"].tolist(), dtype=np.int64).reshape(
        len(labelled.frame), len(labelled.classes)
    )
    return {
        "match": match,
        "images": int(len(matrix)),
        "positives": {c: int(v) for c, v in zip(labelled.classes, matrix.sum(axis=0))},
    }


def patient_split(patients: pd.Series, val_fraction: float, seed: int, holdout: Iterable[str] = ()) -> pd.Series:
    """Seeded patient-wise training/validation split with a target share of images.

    The ``holdout`` patients go to validation first; then whole patients, in a seeded random
    order, until validation holds ``val_fraction`` of the images (the last patient added may
    overshoot by its own images). Every image of a patient lands in the same split.

    Args:
        patients: patient id of each row (image).
        val_fraction: target fraction of the images in validation, in (0, 1).
        seed: seed of the patient order (``numpy.random.default_rng``).
        holdout: patients that must not be in training.

    Returns:
        series of ``"training"`` / ``"validation"`` aligned with ``patients``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    sizes = patients.value_counts(sort=False)
    held = set(map(str, holdout)) & set(sizes.index)
    order = np.array(sorted(p for p in sizes.index if p not in held), dtype=object)
    order = order[np.random.default_rng(seed).permutation(len(order))]
    target = val_fraction * len(patients)
    val = set(held)
    count = int(sizes[list(held)].sum()) if held else 0
    for p in order:
        if count >= target:
            break
        val.add(p)
        count += int(sizes[p])
    split = np.where(patients.isin(val).to_numpy(), "validation", "training").astype(object)
    return pd.Series(split, index=patients.index)


def holdout_patients(paths: Iterable[str]) -> set[str]:
    """Patient ids of data lists (every split) whose patients must stay out of training."""
    from ...data import read_json

    out = set()
    for path in paths:
        raw = read_json(path)
        for key, items in raw.items():
            if isinstance(items, list) and key != "classes":
                out.update(str(item["patient"]) for item in items if isinstance(item, dict) and "patient" in item)
    return out


def check_unique_images(frame: pd.DataFrame, where: str) -> None:
    """Stop when an image is listed twice."""
    dup = frame["image"].duplicated(keep=False)
    if dup.any():
        shown = frame.loc[dup, "image"].drop_duplicates().head(5).tolist()
        raise BuildError(
            f"{where}: {int(frame.loc[dup, 'image'].nunique())} image(s) listed more than once, e.g. {shown}"
        )


def check_patients(frame: pd.DataFrame, where: str) -> None:
    """Stop when a patient appears in more than one split."""
    per_patient = frame.groupby("patient")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        examples = []
        for p in leaked.index[:5]:
            examples.append(f"{p} in {sorted(frame.loc[frame['patient'] == p, 'split'].unique())}")
        raise BuildError(f"{where}: {len(leaked)} patient(s) appear in more than one split, e.g. {'; '.join(examples)}")


def assemble(labelled: Labelled, *, dataset: str, scheme: str, match: str | None, info: dict, dropped: Dropped,
             rows_read: int, unmapped: Counter, other_match: dict | None = None,
             labelled_classes: Sequence[str] | None = None) -> tuple[dict, dict]:
    """The data list and its summary from labelled rows (column ``split`` set)."""
    frame = labelled.frame
    where = f"{dataset} data list"
    check_unique_images(frame, where)
    check_patients(frame, where)
    classes = labelled.classes
    datalist = {"classes": classes, "scheme": scheme}
    source = {"dataset": dataset, "match": match, **info}
    if labelled_classes is not None:
        source["labelled_classes"] = list(labelled_classes)
    datalist["source"] = source
    summary = {
        "dataset": dataset,
        "scheme": scheme,
        "match": match,
        **info,
        "rows_read": int(rows_read),
        "dropped": dict(dropped.counts),
        "dropped_out_of_scheme_by_class": dict(sorted(labelled.out_of_scheme.items(), key=lambda kv: -kv[1])),
        "unmapped_terms": {t: {"rows": n, "known": harmonise.is_known(t, dataset)} for t, n in unmapped.most_common()},
        "images": {},
        "patients": {},
        "positives": {},
    }
    if labelled_classes is not None:
        summary["labelled_classes"] = list(labelled_classes)
    for split in SPLITS:
        part = frame[frame["split"] == split]
        datalist[split] = [
            {"image": i, "label": lab, "patient": p} for i, lab, p in zip(part["image"], part["label"], part["patient"])
        ]
        summary["images"][split] = int(len(part))
        summary["patients"][split] = int(part["patient"].nunique())
        matrix = np.asarray(part["label"].tolist(), dtype=np.int64).reshape(len(part), len(classes))
        summary["positives"][split] = {c: int(v) for c, v in zip(classes, matrix.sum(axis=0))}
    summary["images"]["total"] = int(len(frame))
    if other_match is not None:
        summary["other_match"] = other_match
    return datalist, summary
