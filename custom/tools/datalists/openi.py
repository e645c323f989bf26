"""OpenI / Indiana (test set): frontal images of the reports, labels from the MeSH <automatic> terms."""

from __future__ import annotations

import io
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import harmonise
from .core import (BuildError, Dropped, apply_scheme, assemble, count_unmapped, other_match, positives_from_terms,
                   positives_from_text, read_table)

# ---------------------------------------------------------------- OpenI (Indiana)

OPENI_VIEW_FILES = {"tsne": "nlmcxr_tsne_pa.csv", "dicom": "nlmcxr_dicom_metadata.csv"}
FRONTAL_VIEWS = {"pa", "ap", "frontal", "f"}
LATERAL_VIEWS = {"l", "ll", "rl", "lateral", "large lateral"}


def read_openi_reports(reports) -> tuple[pd.DataFrame, int]:
    """Images of the OpenI reports (``NLMCXR_reports.tgz`` or a folder of its XML files).

    Returns:
        (frame with ``uid``, ``imageid``, ``terms`` (sorted unique lower-cased MeSH automatic
        terms of the report), in report then image order; number of reports without images).
    """
    reports = Path(reports)
    if not reports.exists():
        raise FileNotFoundError(f"OpenI reports not found: {reports}")
    if reports.is_dir():
        files = sorted(reports.rglob("*.xml"))
        docs = ((str(p), p.read_bytes()) for p in files)
        total = len(files)
    else:
        try:
            tar = tarfile.open(reports, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise BuildError(f"{reports}: not a tar archive of OpenI XML reports: {e}") from None
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")]
        docs = ((m.name, tar.extractfile(m).read()) for m in members)
        total = len(members)
    if not total:
        raise BuildError(f"{reports}: no XML report found")
    rows, without = [], 0
    for name, content in tqdm(
        docs, total=total, desc="OpenI reports", unit="report", mininterval=2.0, disable=None, leave=False
    ):
        try:
            root = ET.parse(io.BytesIO(content)).getroot()
        except ET.ParseError as e:
            raise BuildError(f"{reports}: report {name} is not valid XML: {e}") from None
        uid = root.find("uId")
        if uid is None or "id" not in uid.attrib:
            raise BuildError(f"{reports}: report {name} has no <uId id=...>")
        terms = sorted({(n.text or "").strip().lower() for n in root.findall(".//MeSH/automatic")} - {""})
        images = [im.attrib.get("id") for im in root.findall(".//parentImage")]
        if not images:
            without += 1
        for image in images:
            if not image:
                raise BuildError(f"{reports}: report {name} has a <parentImage> without id")
            rows.append({"uid": uid.attrib["id"], "imageid": image, "terms": terms})
    return pd.DataFrame(rows, columns=["uid", "imageid", "terms"]), without


def _find_next_to(reports, stem: str) -> Path | None:
    folder = Path(reports).parent
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def openi_views(
    data: pd.DataFrame, views=None, tsne_views=None, dicom_views=None, reports=None
) -> tuple[pd.Series, str]:
    """``"frontal"`` / ``"lateral"`` / NaN for each OpenI image, and the rule used.

    With ``views`` (a table with ``imageid`` or ``filename`` and ``view`` or ``projection``
    columns, e.g. the ``indiana_projections.csv`` the paper's authors used), it decides alone.
    Otherwise: (1) the t-SNE view estimate (``nlmcxr_tsne_pa.csv``, one image per report);
    (2) in a report with two images, the other image takes the opposite view (a frontal + lateral
    study); (3) the DICOM View Position (``nlmcxr_dicom_metadata.csv``): PA/AP frontal,
    LL/RL/LATERAL lateral. Images left without a view are dropped.
    """
    def norm(series):
        s = series.astype(str).str.strip().str.lower()
        return s.map(lambda v: "frontal" if v in FRONTAL_VIEWS else "lateral" if v in LATERAL_VIEWS else np.nan)

    if views not in (None, ""):
        table = read_table(views)
        if "imageid" in table.columns:
            ids = table["imageid"].astype(str)
        elif "filename" in table.columns:  # indiana_projections.csv: 1_IM-0001-4001.dcm.png -> CXR1_IM-0001-4001
            ids = "CXR" + table["filename"].astype(str).str.replace(r"\.dcm\.png$|\.png$", "", regex=True)
        else:
            raise BuildError(f"{views}: needs an 'imageid' or 'filename' column; it has {list(table.columns)}")
        col = "view" if "view" in table.columns else "projection" if "projection" in table.columns else None
        if col is None:
            raise BuildError(f"{views}: needs a 'view' or 'projection' column; it has {list(table.columns)}")
        lookup = pd.Series(norm(table[col]).to_numpy(), index=ids.to_numpy())
        lookup = lookup[~lookup.index.duplicated()]
        return data["imageid"].map(lookup), f"view table {Path(views).name}"
    tsne_views = tsne_views or (_find_next_to(reports, OPENI_VIEW_FILES["tsne"]) if reports else None)
    dicom_views = dicom_views or (_find_next_to(reports, OPENI_VIEW_FILES["dicom"]) if reports else None)
    if not tsne_views or not dicom_views:
        raise BuildError("OpenI needs the image views: give --views (a frontal/lateral table), or --tsne_views "
                         f"({OPENI_VIEW_FILES['tsne']}) and --dicom_views ({OPENI_VIEW_FILES['dicom']}), "
                         "or put those two files next to the reports")
    tsne = read_table(tsne_views, ["imageid", "tsne-view"])
    dicom = read_table(dicom_views, ["imageid", "View Position"], usecols=())
    view = data["imageid"].map(
        pd.Series(norm(tsne["tsne-view"]).to_numpy(), index=tsne["imageid"].astype(str)).groupby(level=0).first()
    )
    per_report = data.groupby("uid")["imageid"].transform("size")
    known = view.notna()
    partner = view.groupby(data["uid"]).transform(lambda s: s.dropna().iloc[0] if s.notna().sum() == 1 else np.nan)
    opposite = partner.map({"frontal": "lateral", "lateral": "frontal"})
    view = view.where(known, opposite.where(per_report == 2))
    dicom_view = data["imageid"].map(
        pd.Series(norm(dicom["View Position"]).to_numpy(), index=dicom["imageid"].astype(str)).groupby(level=0).first()
    )
    view = view.fillna(dicom_view)
    rule = (f"t-SNE view ({Path(tsne_views).name}), else opposite of the partner in a two-image report, else "
            f"DICOM View Position ({Path(dicom_views).name})")
    return view, rule


def _openi_positives(data: pd.DataFrame, match: str) -> pd.DataFrame:
    if match == "paper":
        return positives_from_text(data["terms"].map("|".join), "openi")
    return positives_from_terms(data["terms"], "openi_exact")[0]


def build_openi(metadata, scheme: str = "nih14", match: str = "paper", views=None, tsne_views=None, dicom_views=None,
                image_prefix: str = "", image_suffix: str = ".png", **_) -> tuple[dict, dict]:
    """OpenI / Indiana test set from the reports (``NLMCXR_reports.tgz``): frontal images
    (:func:`openi_views`), labels from the MeSH automatic terms (the ``<major>`` terms are ignored,
    as by the paper's authors): ``match="paper"`` substring matching of the paper's 18 OpenI
    pathologies, ``"exact"`` exact terms; No Finding = none of them; images positive for a
    pathology outside the scheme dropped. The patient is the report id (``CXR<n>``).
    """
    data, without = read_openi_reports(metadata)
    rows_read = len(data)
    dropped = Dropped()
    view, rule = openi_views(data, views, tsne_views, dicom_views, reports=metadata)
    data = data.assign(image=image_prefix + data["imageid"] + image_suffix, patient=data["uid"], split="test")
    data = dropped.keep(data, view.notna().to_numpy(), "view unknown")
    data = dropped.keep(data, view[data.index].eq("frontal").to_numpy(), "lateral view")
    source = harmonise.source_key("openi", match)
    unmapped = count_unmapped(data["terms"], source)
    labelled = apply_scheme(data, _openi_positives(data, match), source, scheme, dropped)
    other = "exact" if match == "paper" else "paper"
    other_result = other_match(
        apply_scheme(data, _openi_positives(data, other), harmonise.source_key("openi", other), scheme, Dropped()),
        other,
    )
    info = {
        "metadata": Path(metadata).name,
        "views": rule,
        "reports_without_images": without,
        "split_method": "all frontal images -> test",
    }
    return assemble(labelled, dataset="openi", scheme=scheme, match=match, info=info, dropped=dropped,
                    rows_read=rows_read, unmapped=unmapped, other_match=other_result)
