"""One builder per source dataset: metadata tables -> harmonised, leak-free data list.

Each ``build_<dataset>`` reads the dataset's own metadata, applies the dataset's selection rules
(counted by reason), maps its terms through the shared table (:mod:`.harmonise`), applies the
scheme, splits by patient and returns ``(datalist, summary)``. :func:`build_datalist` writes both
and prints the summary. The rules are those of the paper (bundle/docs/real_datasets.md).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...files import write_json
from . import harmonise
from .core import (BuildError, Dropped, apply_scheme, assemble, holdout_patients, keep_found, patient_split,
                   positives_from_columns, positives_from_terms, read_table)
from .output import format_summary, summary_path
from .openi import build_openi
from .padchest import build_padchest

#: the schemes each dataset can be built for (a scheme needs the source to label its classes).
DATASET_SCHEMES = {
    "nih": ("nih14",),
    "chexpert": ("chexpert8",),
    "openi": ("nih14", "chexpert8"),
    "padchest": ("nih14", "chexpert8"),
    "nih_google": ("nih14", "chexpert8"),
}
NIH_SPLIT_FILES = ("train_val_list.txt", "test_list.txt")
#: where NIH images are looked for under ``dataset_dir``: the folder itself, ``images/`` (the twelve
#: ``images_NNN.tar.gz`` archives unpacked in one place) and ``images_001/images/`` ... ``images_012/images/``
#: (each archive in its own folder).
NIH_LAYOUTS = ("", "images", "images_[0-9][0-9][0-9]/images")
#: the builders that can keep only the images found under ``dataset_dir``, and where they look.
IMAGE_LAYOUTS = {"nih": NIH_LAYOUTS, "nih_google": NIH_LAYOUTS}
#: share of the NIH images in the official test list (25,596 of 112,120): the fallback split's validation share.
NIH_TEST_SHARE = 0.228


def _as_list(value) -> list[str]:
    if value in (None, "", ()):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


# ---------------------------------------------------------------- NIH ChestX-ray14


def _read_split_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


def nih_official_lists(metadata, split_dir=None) -> tuple[Path, Path] | None:
    """The official ``train_val_list.txt`` and ``test_list.txt``: in ``split_dir`` (required there
    when given) or next to the metadata file; ``None`` when absent."""
    if split_dir not in (None, ""):
        folder = Path(split_dir)
        paths = tuple(folder / n for n in NIH_SPLIT_FILES)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"official NIH split file(s) not found: {missing} (--split_dir must hold {list(NIH_SPLIT_FILES)})"
            )
        return paths
    paths = tuple(Path(metadata).parent / n for n in NIH_SPLIT_FILES)
    return paths if all(p.is_file() for p in paths) else None


def build_nih(metadata, scheme: str = "nih14", split_dir=None, seed: int = 0, val_fraction: float = NIH_TEST_SHARE,
              holdout=None, image_prefix: str = "", dataset_dir=None, **_) -> tuple[dict, dict]:
    """NIH ChestX-ray14 (``Data_Entry_2017_v2020.csv``): 13 diseases + No Finding.

    Images labelled Consolidation are dropped (the class is not in ``nih14``). Split: the official
    ``train_val_list.txt`` -> training and ``test_list.txt`` -> validation (the paper's noisy
    validation set); without them a seeded patient-wise split with ``val_fraction`` of the images
    in validation (default: the official test list's share); patients of the ``holdout`` data
    lists go to validation first. ``dataset_dir``: keep only the images found under that folder
    (:data:`NIH_LAYOUTS`), after the split (an image lands in the split a full build gives it), with
    paths relative to it.
    """
    frame = read_table(metadata, ["Image Index", "Finding Labels", "Patient ID"], usecols=())
    rows_read = len(frame)
    dropped = Dropped()
    data = pd.DataFrame(
        {
            "name": frame["Image Index"].astype(str).str.strip(),
            "patient": frame["Patient ID"].astype(str).str.strip(),
            "terms": frame["Finding Labels"]
            .fillna("")
            .astype(str)
            .map(lambda s: [t.strip() for t in s.split("|") if t.strip()]),
        }
    )
    empty = data["terms"].map(len) == 0
    if empty.any():
        raise BuildError(f"{metadata}: empty 'Finding Labels' in data row(s) {list(np.flatnonzero(empty)[:5] + 1)}")
    data["image"] = image_prefix + data["name"]
    held = holdout_patients(_as_list(holdout))
    official = nih_official_lists(metadata, split_dir)
    if official is not None:
        train_names, test_names = (_read_split_file(p) for p in official)
        known = set(data["name"])
        for path, names in zip(official, (train_names, test_names)):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise BuildError(f"{path}: {len(unknown)} image(s) not in {metadata}, e.g. {unknown[:5]}")
        both = set(train_names) & set(test_names)
        if both:
            raise BuildError(f"{official[0]} and {official[1]} share {len(both)} image(s), e.g. {sorted(both)[:5]}")
        split = pd.Series(None, index=data.index, dtype=object)
        split[data["name"].isin(set(train_names))] = "training"
        split[data["name"].isin(set(test_names))] = "validation"
        data["split"] = split
        data = dropped.keep(data, split.notna(), "not in the official split lists")
        method = f"official lists {official[0].name} -> training, {official[1].name} -> validation"
        leaked = held & set(data.loc[data["split"] == "training", "patient"])
        if leaked:
            raise BuildError(
                f"{len(leaked)} holdout patient(s) are in the official training list, e.g. {sorted(leaked)[:5]}"
            )
    else:
        warnings.warn(
            f"official NIH split files {list(NIH_SPLIT_FILES)} not found next to {metadata} and no --split_dir given: "
            f"using a seeded patient-wise split (seed {seed}, {val_fraction:.1%} of the images in validation)",
            stacklevel=2,
        )
        data["split"] = patient_split(data["patient"], val_fraction, seed, held)
        method = (f"seeded patient-wise fallback (official lists not given): seed {seed}, {val_fraction} of the "
                  f"images in validation")
        if held:
            method += (f", {len(held & set(data['patient']))} patients of "
                       f"{', '.join(Path(h).name for h in _as_list(holdout))} kept in validation")
    positives, unmapped = positives_from_terms(data["terms"], "nih")
    labelled = apply_scheme(data, positives, "nih", scheme, dropped)
    info = {"metadata": Path(metadata).name, "split_method": method, "seed": seed if official is None else None}
    if dataset_dir not in (None, ""):
        labelled = keep_found(labelled, dataset_dir, dropped, NIH_LAYOUTS)
        info["dataset_dir"] = str(dataset_dir)
    return assemble(labelled, dataset="nih", scheme=scheme, match=None, info=info, dropped=dropped,
                    rows_read=rows_read, unmapped=unmapped)


# ---------------------------------------------------------------- CheXpert

CHEXPERT_META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_PATIENT = re.compile(r"(patient\d+)")


def build_chexpert(metadata, scheme: str = "chexpert8", seed: int = 0, val_fraction: float = 0.1,
                   uncertain: str = "zeros", holdout=None, image_prefix: str = "", **_) -> tuple[dict, dict]:
    """CheXpert (``train.csv``): frontal images, Age != 0, blank -> 0, uncertain (-1) -> 0
    (``uncertain="ones"``: -> 1), images positive for a class outside the scheme dropped, images with
    no positive label dropped, 90/10 patient-wise split (``val_fraction`` of the images in validation).

    Image paths drop the leading ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``) folder, so
    ``dataset_dir`` is that folder.
    """
    if uncertain not in ("zeros", "ones"):
        raise ValueError(f"uncertain must be 'zeros' or 'ones', got {uncertain!r}")
    table_columns = [t for syns in harmonise.synonyms("chexpert").values() for t in syns]
    frame = read_table(metadata, ["Path", "Frontal/Lateral", "Age", *table_columns])
    rows_read = len(frame)
    dropped = Dropped()
    label_columns = [c for c in frame.columns if c not in CHEXPERT_META_COLUMNS and not str(c).startswith("Unnamed")]
    values = frame[label_columns].apply(pd.to_numeric, errors="coerce")
    bad = ~(values.isin([0, 1, -1]) | frame[label_columns].isna())
    if bad.any().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise BuildError(
            f"{metadata}: data row {r + 1}, column '{label_columns[c]}': value "
            f"{frame.iloc[r][label_columns[c]]!r} is not 1, 0, -1 or blank"
        )
    patients = frame["Path"].astype(str).str.extract(_PATIENT, expand=False)
    if patients.isna().any():
        r = int(np.flatnonzero(patients.isna())[0])
        raise BuildError(f"{metadata}: data row {r + 1}: no 'patientNNNNN' folder in Path {frame['Path'].iloc[r]!r}")
    images = frame["Path"].astype(str).str.replace(r"^CheXpert-v1\.0[^/]*/", "", regex=True)
    positive = values.eq(1) | values.eq(-1) if uncertain == "ones" else values.eq(1)
    data = pd.DataFrame({"image": image_prefix + images, "patient": patients})
    data = dropped.keep(data, frame["Frontal/Lateral"].astype(str).str.strip().eq("Frontal").to_numpy(), "lateral view")
    age = pd.to_numeric(frame.loc[data.index, "Age"], errors="coerce")
    data = dropped.keep(data, (age != 0).to_numpy(), "Age 0")
    data["split"] = patient_split(data["patient"], val_fraction, seed, holdout_patients(_as_list(holdout)))
    positives, unmapped = positives_from_columns(positive.loc[data.index], "chexpert")
    labelled = apply_scheme(data, positives, "chexpert", scheme, dropped)
    info = {"metadata": Path(metadata).name, "uncertain": uncertain, "seed": seed,
            "split_method": f"seeded patient-wise: seed {seed}, {val_fraction} of the images in validation"}
    return assemble(labelled, dataset="chexpert", scheme=scheme, match=None, info=info, dropped=dropped,
                    rows_read=rows_read, unmapped=unmapped)


# ---------------------------------------------------------------- Google relabelled NIH test set

GOOGLE_COLUMNS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")


def build_nih_google(
    metadata, scheme: str = "nih14", set_id: str = "test", image_prefix: str = "", dataset_dir=None, **_
) -> tuple[dict, dict]:
    """Google's radiologist relabel of NIH images (``google2019_nih-chest-xray-labels.csv``), the
    ``Set Id == "test"`` rows: YES -> 1; "Nodule or mass" -> Mass and Nodule; Pneumothorax and
    Fracture as given. A clean test set with partial labels: no image is dropped, and the scheme
    classes the relabel does not cover are 0 (listed in ``source.labelled_classes``).
    ``dataset_dir``: keep only the images found under that folder (NIH's layouts,
    :data:`NIH_LAYOUTS`), with paths relative to it.
    """
    frame = read_table(metadata, ["Image Index", "Patient ID", "Set Id", *GOOGLE_COLUMNS], usecols=())
    rows_read = len(frame)
    dropped = Dropped()
    values = frame[list(GOOGLE_COLUMNS)].apply(lambda s: s.astype(str).str.strip().str.upper())
    bad = ~values.isin(["YES", "NO"])
    if bad.any().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise BuildError(
            f"{metadata}: data row {r + 1}, column '{GOOGLE_COLUMNS[c]}': value "
            f"{frame.iloc[r][GOOGLE_COLUMNS[c]]!r} is not YES or NO"
        )
    data = pd.DataFrame({"image": image_prefix + frame["Image Index"].astype(str).str.strip(),
                         "patient": frame["Patient ID"].astype(str).str.strip(), "split": "test"})
    data = dropped.keep(
        data, frame["Set Id"].astype(str).str.strip().eq(set_id).to_numpy(), f"Set Id is not '{set_id}'"
    )
    positives, unmapped = positives_from_columns(values.loc[data.index].eq("YES"), "google")
    labelled_classes = [c for c in harmonise.scheme_classes(scheme) if c in harmonise.vocabulary("google")]
    labelled = apply_scheme(
        data, positives, "google", scheme, dropped, drop_out_of_scheme=False, require_positive=False
    )
    info = {"metadata": Path(metadata).name, "split_method": f"all rows with Set Id '{set_id}' -> test"}
    if dataset_dir not in (None, ""):
        labelled = keep_found(labelled, dataset_dir, dropped, NIH_LAYOUTS)
        info["dataset_dir"] = str(dataset_dir)
    return assemble(labelled, dataset="nih_google", scheme=scheme, match=None, info=info, dropped=dropped,
                    rows_read=rows_read, unmapped=unmapped, labelled_classes=labelled_classes)

# ---------------------------------------------------------------- entry point

BUILDERS = {
    "nih": build_nih,
    "chexpert": build_chexpert,
    "openi": build_openi,
    "padchest": build_padchest,
    "nih_google": build_nih_google,
}


def build(dataset: str, scheme: str, metadata, **options) -> tuple[dict, dict]:
    """Build a data list in memory: ``(datalist, summary)`` (see :func:`build_datalist`)."""
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(BUILDERS)}")
    if scheme not in DATASET_SCHEMES[dataset]:
        raise ValueError(
            f"dataset {dataset!r} can be built for scheme(s) {list(DATASET_SCHEMES[dataset])}, not {scheme!r}"
        )
    if options.get("dataset_dir") not in (None, ""):
        if dataset not in IMAGE_LAYOUTS:
            raise ValueError(f"dataset_dir (keep only the images found there) is supported for "
                             f"{sorted(IMAGE_LAYOUTS)}, not {dataset!r}")
        if options.get("image_prefix"):
            raise ValueError("dataset_dir and image_prefix exclude each other: with dataset_dir the image paths are "
                             "those found, relative to it")
    match = options.get("match", "paper")
    if match not in harmonise.MATCH_MODES:
        raise ValueError(f"unknown match mode {match!r}; expected one of {harmonise.MATCH_MODES}")
    return BUILDERS[dataset](metadata, scheme=scheme, **options)


def build_datalist(
    dataset: str, scheme: str, metadata, output, strict: bool = False, quiet: bool = False, **options
) -> Path:
    """Build, check, write and summarise a data list of a real dataset.

    Args:
        dataset: ``nih``, ``chexpert``, ``openi``, ``padchest`` or ``nih_google``.
        scheme: ``nih14`` or ``chexpert8``.
        metadata: the dataset's metadata table (OpenI: the reports ``.tgz`` or XML folder).
        output: the data list (``.json`` or ``.json.gz``); the summary goes beside it as
            ``<name>.summary.json``.
        strict: stop when a source term is not in the dataset's published vocabulary.
        quiet: do not print the summary.
        **options: dataset options: ``split_dir``, ``seed``, ``val_fraction``, ``holdout`` (data
            lists whose patients stay out of training), ``match`` (``paper``/``exact``),
            ``uncertain`` (``zeros``/``ones``), ``views``, ``tsne_views``, ``dicom_views``,
            ``image_dirs``, ``image_prefix``, ``set_id``, ``dataset_dir`` (NIH and Google relabel:
            keep only the images found under that folder, paths relative to it).

    Returns:
        the path of the written data list.
    """
    from ...data import DataList

    datalist, summary = build(dataset, scheme, metadata, **options)
    unknown = {t: v["rows"] for t, v in summary["unmapped_terms"].items() if not v["known"]}
    if strict and unknown:
        raise BuildError(f"{metadata}: {len(unknown)} term(s) not in the {dataset} vocabulary (--strict): "
                         + ", ".join(f"{t!r} ({n} rows)" for t, n in list(unknown.items())[:10]))
    output = write_json(datalist, output)
    DataList(output, check_images=False, required_splits=())  # the written list must load
    write_json(summary, summary_path(output))
    if not quiet:
        print(format_summary(summary))
        print(f"written: {output}\nsummary: {summary_path(output)}")
    return output
