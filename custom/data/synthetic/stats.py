"""Label statistics of the real NIH and PadChest tables for the synthetic benchmark.

The synthetic generator (:mod:`custom.data.synthetic`) samples its clean multi-label targets
from the empirical distribution of NIH ChestX-ray14 label combinations, and re-weights
that distribution towards PadChest-like per-class prevalence for its shifted test split.
This module derives those statistics once from the metadata tables that ship with the
real datasets; the result is committed as ``custom/data/synthetic/nih_label_stats.json`` so
that neither the generator nor the tests need the tables.

Usage::

    python -m custom.cli synthetic_stats --nih_csv NIH_CSV [--padchest_csv PADCHEST_CSV] --output OUTPUT_JSON

Rules
-----
NIH (``Data_Entry_2017_v2020.csv``):
    the ``Finding Labels`` column lists the findings joined by ``|``. Every image with
    Consolidation is dropped (as the paper does), which leaves 13 diseases + No Finding
    (:data:`custom.labels.NIH14_CLASSES`). Each remaining image is one multi-hot row over
    the 14 classes; rows are grouped into distinct combinations with their counts.

PadChest (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``):
    the paper's test-set rule (SPEC section 3, torchxrayvision's 28 pathologies):
    rows with ``MethodProjection == "Manual review of DICOM fields"``,
    ``MethodLabel == "Physician"``, ``Projection`` in {PA, AP} and non-null ``Labels``;
    first row per ``PatientID`` in file order; age ``2019 - PatientBirth > 10`` (rows
    without a birth year are dropped). A pathology is present when its lower-cased name
    or one of its synonyms (:data:`PADCHEST_SYNONYMS`) occurs as a substring of the
    lower-cased raw ``Labels`` string. Images positive for any of the 15 pathologies
    outside the NIH scheme are dropped, and No Finding means "none of the 28
    pathologies". On the 2019 table this keeps 14,714 images, the paper's count, of which
    about 78% are No Finding. Only per-class prevalence is kept (it is used to re-weight
    the NIH combinations, so combinations never seen in NIH are not needed).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ...files import atomic_path
from ...labels import NIH14_CLASSES, NO_FINDING, disease_indices

#: torchxrayvision's 28 PadChest pathologies (``"Tube'"`` keeps its quote: it selects
#: terms that end with "tube", such as "endotracheal tube").
PADCHEST_PATHOLOGIES = [
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
    "Mass", "Hernia", "Fracture", "Granuloma", "Flattened Diaphragm", "Bronchiectasis",
    "Aortic Elongation", "Scoliosis", "Hilar Enlargement", "Tuberculosis", "Air Trapping",
    "Costophrenic Angle Blunting", "Aortic Atheromatosis", "Hemidiaphragm Elevation",
    "Support Devices", "Tube'",
]

#: Extra substrings that also mark a pathology present (torchxrayvision's mapping).
PADCHEST_SYNONYMS = {
    "Infiltration": [
        "infiltrates", "interstitial pattern", "ground glass pattern",
        "reticular interstitial pattern", "reticulonodular interstitial pattern",
        "alveolar pattern", "consolidation", "air bronchogram",
    ],
    "Pleural_Thickening": ["pleural thickening"],
    "Consolidation": ["air bronchogram"],
    "Hilar Enlargement": ["adenopathy", "pulmonary artery enlargement"],
    "Support Devices": ["device", "pacemaker"],
    "Tube'": ["stent'"],
}

NIH_LABEL_COLUMN = "Finding Labels"
NIH_DROPPED = "Consolidation"
PADCHEST_COLUMNS = [
    "ImageID", "PatientID", "PatientBirth", "Projection", "MethodProjection",
    "MethodLabel", "Labels",
]


def _require_columns(frame, columns, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; found {list(frame.columns)}")


def nih_multi_hot(nih_csv):
    """Multi-hot NIH label rows after dropping Consolidation images.

    Args:
        nih_csv: path of ``Data_Entry_2017_v2020.csv`` (optionally gzipped).

    Returns:
        tuple ``(labels, n_rows, n_dropped)``: ``labels`` is a ``(N, 14)`` uint8 array in
        :data:`NIH14_CLASSES` order, ``n_rows`` the number of rows read and ``n_dropped``
        the number of Consolidation images removed.

    Raises:
        ValueError: on a missing column or a label term outside the NIH vocabulary.
    """
    frame = pd.read_csv(nih_csv, usecols=lambda c: c == NIH_LABEL_COLUMN)
    _require_columns(frame, [NIH_LABEL_COLUMN], str(nih_csv))
    terms = frame[NIH_LABEL_COLUMN].astype(str).str.split("|")
    known = set(NIH14_CLASSES) | {NIH_DROPPED}
    unknown = Counter(t for row in terms for t in row if t not in known)
    if unknown:
        raise ValueError(f"{nih_csv}: unknown NIH label term(s) {dict(unknown)}")
    keep = ~terms.apply(lambda row: NIH_DROPPED in row)
    index = {name: i for i, name in enumerate(NIH14_CLASSES)}
    labels = np.zeros((int(keep.sum()), len(NIH14_CLASSES)), dtype=np.uint8)
    for r, row in enumerate(terms[keep]):
        for term in row:
            labels[r, index[term]] = 1
    return labels, len(frame), int((~keep).sum())


def padchest_multi_hot(padchest_csv):
    """PadChest test-set labels over the 14 NIH classes, by the paper's substring rule.

    Args:
        padchest_csv: path of the PadChest labels table (optionally gzipped).

    Returns:
        tuple ``(labels, counts)``: ``labels`` is a ``(N, 14)`` uint8 array in
        :data:`NIH14_CLASSES` order (No Finding = none of the 28 pathologies) and
        ``counts`` a dict with the number of rows left after each filter.
    """
    frame = pd.read_csv(padchest_csv, usecols=lambda c: c in PADCHEST_COLUMNS, low_memory=False)
    _require_columns(frame, PADCHEST_COLUMNS, str(padchest_csv))
    counts = {"rows": len(frame)}
    frame = frame[
        (frame["MethodProjection"] == "Manual review of DICOM fields")
        & (frame["MethodLabel"] == "Physician")
        & frame["Projection"].isin(["PA", "AP"])
        & frame["Labels"].notna()
    ]
    counts["physician_pa_ap"] = len(frame)
    frame = frame.drop_duplicates("PatientID", keep="first")
    counts["one_per_patient"] = len(frame)
    age = 2019 - pd.to_numeric(frame["PatientBirth"], errors="coerce")
    frame = frame[age > 10]  # NaN compares False: missing birth year dropped
    counts["age_over_10"] = len(frame)

    text = frame["Labels"].str.lower()
    present = {}
    for name in PADCHEST_PATHOLOGIES:
        mask = text.str.contains(name.lower(), regex=False)
        for synonym in PADCHEST_SYNONYMS.get(name, []):
            mask |= text.str.contains(synonym, regex=False)
        present[name] = mask.to_numpy()
    diseases = [NIH14_CLASSES[i] for i in disease_indices(NIH14_CLASSES)]
    outside = [p for p in PADCHEST_PATHOLOGIES if p not in diseases]
    keep = ~np.any([present[p] for p in outside], axis=0)
    counts["in_scheme"] = int(keep.sum())

    labels = np.zeros((int(keep.sum()), len(NIH14_CLASSES)), dtype=np.uint8)
    for i, name in enumerate(NIH14_CLASSES):
        if name != NO_FINDING:
            labels[:, i] = present[name][keep]
    nf = NIH14_CLASSES.index(NO_FINDING)
    labels[:, nf] = labels.sum(axis=1) == 0
    return labels, counts


def derive_label_stats(nih_csv, padchest_csv=None, min_count=1):
    """Derive the label statistics the synthetic generator samples from.

    Args:
        nih_csv: path of the NIH ``Data_Entry_2017_v2020.csv`` table (``.gz`` accepted).
        padchest_csv: optional path of the PadChest labels table; when given, the output
            has a ``"padchest"`` section with per-class prevalence.
        min_count: keep only label combinations seen at least this often in NIH.

    Returns:
        dict, JSON-serialisable, with keys ``classes``, ``nih`` (``num_images``,
        ``prevalence`` per class, ``combos``: list of ``{"labels": [names], "count": int}``
        sorted by decreasing count), optionally ``padchest`` (``num_images``,
        ``prevalence``, ``filter_counts``) and ``notes``.
    """
    labels, n_rows, n_dropped = nih_multi_hot(nih_csv)
    patterns = Counter(map(bytes, labels))
    combos = []
    for key, count in sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0])):
        if count < min_count:
            continue
        row = np.frombuffer(key, dtype=np.uint8)
        combos.append({"labels": [NIH14_CLASSES[i] for i in np.flatnonzero(row)], "count": count})
    kept = sum(c["count"] for c in combos)
    stats = {
        "classes": list(NIH14_CLASSES),
        "nih": {
            "source": Path(nih_csv).name,
            "num_rows": n_rows,
            "num_dropped_consolidation": n_dropped,
            "num_images": int(len(labels)),
            "prevalence": {
                name: round(float(p), 6) for name, p in zip(NIH14_CLASSES, labels.mean(axis=0))
            },
            "num_combos_total": len(patterns),
            "num_combos_kept": len(combos),
            "num_images_in_kept_combos": kept,
            "min_count": min_count,
            "combos": combos,
        },
    }
    notes = [
        "NIH: images with Consolidation dropped; 13 diseases + No Finding; a combo is one "
        "distinct multi-hot row over 'classes' (No Finding rows have no disease).",
        "NIH: all combos kept." if min_count <= 1 else
        f"NIH: combos seen fewer than {min_count} times are left out "
        f"({len(patterns) - len(combos)} combos, {len(labels) - kept} images); "
        "'prevalence' is computed on all images.",
    ]
    if padchest_csv is not None:
        pc_labels, counts = padchest_multi_hot(padchest_csv)
        stats["padchest"] = {
            "source": Path(padchest_csv).name,
            "num_images": int(len(pc_labels)),
            "filter_counts": counts,
            "prevalence": {
                name: round(float(p), 6)
                for name, p in zip(NIH14_CLASSES, pc_labels.mean(axis=0))
            },
        }
        notes.append(
            "PadChest: physician-labelled PA/AP rows, first per patient, age > 10; "
            "substring matching of torchxrayvision's 28 pathologies and synonyms in the "
            "lower-cased Labels string; images with a pathology outside the NIH scheme "
            "dropped; No Finding = none of the 28. Used as the target prevalence of the "
            "synthetic shifted test split."
        )
    stats["notes"] = notes
    return stats


def dumps_stats(stats):
    """JSON text of ``stats`` with one NIH combination per line (diff-friendly)."""
    placeholder = "__COMBOS__"
    combos = stats["nih"]["combos"]
    text = json.dumps({**stats, "nih": {**stats["nih"], "combos": placeholder}}, indent=1)
    lines = ",\n   ".join(json.dumps(c) for c in combos)
    return text.replace(json.dumps(placeholder), "[\n   " + lines + "\n  ]") + "\n"


def write_label_stats(nih_csv: str, output: str, padchest_csv: str | None = None, min_count: int = 1) -> Path:
    """Derive the label statistics (:func:`derive_label_stats`) and write them to ``output`` (:func:`dumps_stats`).

    Args:
        nih_csv: NIH's ``Data_Entry_2017_v2020.csv``.
        output: the statistics file to write (the committed one is ``custom/data/synthetic/nih_label_stats.json``).
        padchest_csv: PadChest's ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (default: none, no
            shifted prevalences).
        min_count: keep NIH combinations seen at least this often.
    """
    output = Path(output)
    stats = derive_label_stats(nih_csv, padchest_csv, min_count=int(min_count))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        tmp.write_text(dumps_stats(stats))
    nih = stats["nih"]
    print(f"NIH: {nih['num_images']} images, {nih['num_combos_kept']} combos kept "
          f"of {nih['num_combos_total']}")
    if "padchest" in stats:
        pc = stats["padchest"]
        print(f"PadChest: {pc['num_images']} images, "
              f"No Finding {pc['prevalence'][NO_FINDING]:.3f}")
    print(f"wrote {output} ({output.stat().st_size} bytes)")
    return output
