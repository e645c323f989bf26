"""PadChest (test set): physician-labelled frontal images, one per patient, labels from the free-text terms."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from . import harmonise
from .core import (BuildError, Dropped, apply_scheme, assemble, count_unmapped, other_match, positives_from_terms,
                   positives_from_text, read_table)

# ---------------------------------------------------------------- PadChest

#: PadChest's publication year: age = 2019 - PatientBirth, as the paper's lists.
PADCHEST_YEAR = 2019
PADCHEST_COLUMNS = ("ImageID", "PatientID", "PatientBirth", "Projection", "MethodProjection", "MethodLabel", "Labels")


def _parse_padchest_labels(labels: pd.Series, metadata) -> pd.Series:
    out = []
    for idx, raw in labels.items():
        try:
            terms = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            terms = None
        if not isinstance(terms, (list, tuple)) or not all(isinstance(t, str) for t in terms):
            raise BuildError(
                f"{metadata}: data row {idx + 1}: 'Labels' {raw!r} is not a list of strings such as ['normal']"
            )
        out.append(sorted({t.strip() for t in terms}))
    return pd.Series(out, index=labels.index, dtype=object)


def _padchest_positives(data: pd.DataFrame, match: str) -> pd.DataFrame:
    if match == "paper":
        return positives_from_text(data["raw_labels"], "padchest")
    return positives_from_terms(data["terms"], "padchest_exact")[0]


def build_padchest(
    metadata, scheme: str = "nih14", match: str = "paper", image_dirs: bool = False, image_prefix: str = "", **_
) -> tuple[dict, dict]:
    """PadChest test set (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``).

    Rows kept, in this order: MethodProjection "Manual review of DICOM fields", MethodLabel
    "Physician", Projection PA or AP, Labels present, the first row of each PatientID (file
    order), a birth year, age = 2019 - PatientBirth > 10. Labels: ``match="paper"`` substring
    matching of the 28 PadChest pathologies in the raw Labels string (the paper's lists),
    ``"exact"`` exact terms; No Finding = none of them; images positive for a pathology outside
    the scheme dropped. ``image_dirs``: image paths ``<ImageDir>/<ImageID>`` (the layout of the
    official zip files) instead of ``<ImageID>``.
    """
    frame = read_table(metadata, [*PADCHEST_COLUMNS, *(["ImageDir"] if image_dirs else [])], usecols=())
    rows_read = len(frame)
    dropped = Dropped()
    names = frame["ImageID"].astype(str).str.strip()
    if image_dirs:
        names = frame["ImageDir"].astype(str).str.replace(r"\.0$", "", regex=True) + "/" + names
    data = pd.DataFrame(
        {"image": image_prefix + names, "patient": frame["PatientID"].astype(str).str.strip(), "split": "test"}
    )
    data = dropped.keep(
        data,
        frame["MethodProjection"].eq("Manual review of DICOM fields").to_numpy(),
        "projection not manually reviewed (MethodProjection)",
    )
    data = dropped.keep(
        data, frame.loc[data.index, "MethodLabel"].eq("Physician").to_numpy(), "labels not by a physician (MethodLabel)"
    )
    data = dropped.keep(
        data, frame.loc[data.index, "Projection"].isin(["PA", "AP"]).to_numpy(), "projection not PA or AP"
    )
    data = dropped.keep(data, frame.loc[data.index, "Labels"].notna().to_numpy(), "Labels missing")
    data = dropped.keep(data, ~data["patient"].duplicated(keep="first").to_numpy(), "not the patient's first image")
    birth = pd.to_numeric(frame.loc[data.index, "PatientBirth"], errors="coerce")
    data = dropped.keep(data, birth.notna().to_numpy(), "birth year missing")
    age = PADCHEST_YEAR - pd.to_numeric(frame.loc[data.index, "PatientBirth"], errors="coerce")
    data = dropped.keep(data, (age > 10).to_numpy(), f"age 10 or under ({PADCHEST_YEAR} - PatientBirth)")
    data = data.copy()
    data["raw_labels"] = frame.loc[data.index, "Labels"].astype(str)
    data["terms"] = _parse_padchest_labels(data["raw_labels"], metadata)
    source = harmonise.source_key("padchest", match)
    unmapped = count_unmapped(data["terms"], source)
    labelled = apply_scheme(data, _padchest_positives(data, match), source, scheme, dropped)
    other = "exact" if match == "paper" else "paper"
    other_result = other_match(
        apply_scheme(
            data, _padchest_positives(data, other), harmonise.source_key("padchest", other), scheme, Dropped()
        ),
        other,
    )
    info = {"metadata": Path(metadata).name, "split_method": "all selected rows -> test"}
    return assemble(labelled, dataset="padchest", scheme=scheme, match=match, info=info, dropped=dropped,
                    rows_read=rows_read, unmapped=unmapped, other_match=other_result)
