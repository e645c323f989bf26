"""The one label-harmonisation table shared by every data-list builder.

Every source dataset names its findings differently (NIH ``Finding Labels`` terms, CheXpert
columns, PadChest ``Labels`` terms, OpenI MeSH ``automatic`` terms, the Google relabel columns).
:data:`TABLE` maps them onto one vocabulary of classes; a *scheme* (``nih14`` or ``chexpert8``)
is then a subset of that vocabulary, and every image positive for a vocabulary class outside the
scheme is dropped (the paper's "trimming for consistency between datasets").

Sources and how their synonyms are matched:

=================  ==========================================================================
``nih``            exact ``Finding Labels`` term (split on ``|``)
``chexpert``       column name (value 1 = positive; uncertain -1 per ``--uncertain``)
``google``         column name (value ``YES`` = positive)
``padchest``       ``--match paper``: substring of the raw ``Labels`` string, as the paper's
                   labels (torchxrayvision's 28 PadChest pathologies) were made
``padchest_exact`` ``--match exact``: exact term of the parsed ``Labels`` list
``openi``          ``--match paper``: substring of the lower-cased MeSH automatic terms joined
                   by ``|`` (the paper's 18 OpenI pathologies)
``openi_exact``    ``--match exact``: exact lower-cased MeSH automatic term
=================  ==========================================================================

``No Finding`` is taken from the source where it has one (NIH term, CheXpert column); for
PadChest and OpenI it is derived: no class of the source's vocabulary present (in paper mode the
28 / 18 pathologies; so an image whose only terms are, e.g., "kyphosis" counts as No Finding);
the Google relabel has no No Finding.

The exact mode lists the terms one by one, so substring accidents no longer count: "pericardial
effusion" (not a pleural effusion), "pseudonodule" (by definition not a nodule), "subcutaneous
emphysema" (soft tissue, not lung), "soft tissue mass", "thyroid mass", "cystic fibrosis". It adds
OpenI's "lung consolidation" (Consolidation, outside both schemes) and "enlarged heart".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ...files import read_json
from ...labels import NO_FINDING, SCHEMES

#: match modes for the sources whose terms are free text.
MATCH_MODES = ("paper", "exact")

#: class -> source -> synonyms. Class names follow the NIH spelling where NIH has the class.
TABLE: dict[str, dict[str, list[str]]] = {
    "Atelectasis": {
        "nih": ["Atelectasis"],
        "chexpert": ["Atelectasis"],
        "padchest": ["atelectasis"],
        "padchest_exact": ["atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                           "atelectasis basal", "total atelectasis", "round atelectasis"],
        "openi": ["atelectasis", "atelectases"],
        "openi_exact": ["atelectasis", "atelectases", "pulmonary atelectasis", "focal atelectasis",
                        "discoid atelectasis", "plate-like atelectasis", "patchy atelectasis", "chronic atelectasis",
                        "obstructive atelectasis"],
    },
    "Cardiomegaly": {
        "nih": ["Cardiomegaly"],
        "chexpert": ["Cardiomegaly"],
        "padchest": ["cardiomegaly"],
        "padchest_exact": ["cardiomegaly"],
        "openi": ["cardiomegaly"],
        "openi_exact": ["cardiomegaly", "enlarged heart"],
    },
    "Effusion": {
        "nih": ["Effusion"],
        "chexpert": ["Pleural Effusion"],
        "padchest": ["effusion"],
        "padchest_exact": ["pleural effusion", "loculated pleural effusion", "loculated fissural effusion"],
        "openi": ["effusion"],
        "openi_exact": ["pleural effusion", "pleural effusions", "bilateral pleural effusion", "effusion",
                        "right-sided pleural effusion", "left-sided pleural effusion", "loculated effusion"],
    },
    "Infiltration": {
        "nih": ["Infiltration"],
        "padchest": ["infiltration", "infiltrates", "interstitial pattern", "ground glass pattern",
                     "reticular interstitial pattern", "reticulonodular interstitial pattern", "alveolar pattern",
                     "consolidation", "air bronchogram"],
        "padchest_exact": ["infiltrates", "interstitial pattern", "ground glass pattern",
                           "reticular interstitial pattern", "reticulonodular interstitial pattern",
                           "alveolar pattern"],
        "openi": ["infiltration", "infiltrate"],
        "openi_exact": ["infiltrates"],
    },
    "Mass": {
        "nih": ["Mass"],
        "google": ["Nodule or mass"],
        "padchest": ["mass"],
        "padchest_exact": ["mass", "pulmonary mass"],
        "openi": ["mass"],
        "openi_exact": ["mass lesion", "anterior mediastinal masses", "paratracheal mass"],
    },
    "Nodule": {
        "nih": ["Nodule"],
        "google": ["Nodule or mass"],
        "padchest": ["nodule"],
        "padchest_exact": ["nodule", "multiple nodules"],
        "openi": ["nodule"],
        "openi_exact": ["nodule", "multiple pulmonary nodules", "solitary pulmonary nodule"],
    },
    "Pneumonia": {
        "nih": ["Pneumonia"],
        "chexpert": ["Pneumonia"],
        "padchest": ["pneumonia"],
        "padchest_exact": ["pneumonia", "atypical pneumonia"],
        "openi": ["pneumonia"],
        "openi_exact": ["pneumonia", "right lower lobe pneumonia", "right upper lobe pneumonia",
                        "left upper lobe pneumonia", "left lower lobe pneumonia", "lower lobe pneumonia",
                        "pneumonia right lower lobe", "atypical pneumonias", "peribronchial pneumonia",
                        "recurrent pneumonia", "mycoplasma pneumonia", "pneumonia, viral", "viral pneumonias",
                        "pneumonia, mycoplasma", "multilobar pneumonia", "postobstructive pneumonia",
                        "acute pneumonia"],
    },
    "Pneumothorax": {
        "nih": ["Pneumothorax"],
        "chexpert": ["Pneumothorax"],
        "google": ["Pneumothorax"],
        "padchest": ["pneumothorax"],
        "padchest_exact": ["pneumothorax", "hydropneumothorax"],
        "openi": ["pneumothorax"],
        "openi_exact": ["pneumothorax", "hydropneumothorax", "hemopneumothorax"],
    },
    "Consolidation": {
        "nih": ["Consolidation"],
        "chexpert": ["Consolidation"],
        "padchest": ["consolidation", "air bronchogram"],
        "padchest_exact": ["consolidation", "air bronchogram"],
        "openi_exact": ["lung consolidation"],
    },
    "Edema": {
        "nih": ["Edema"],
        "chexpert": ["Edema"],
        "padchest": ["edema"],
        "padchest_exact": ["pulmonary edema"],
        "openi": ["edema"],
        "openi_exact": ["pulmonary edema", "edemas", "edema", "interstitial pulmonary edema", "alveolar edema",
                        "chronic edema"],
    },
    "Emphysema": {
        "nih": ["Emphysema"],
        "padchest": ["emphysema"],
        "padchest_exact": ["emphysema"],
        "openi": ["emphysema"],
        "openi_exact": ["pulmonary emphysema", "emphysemas", "emphysema", "bullous emphysema",
                        "centrilobular emphysema"],
    },
    "Fibrosis": {
        "nih": ["Fibrosis"],
        "padchest": ["fibrosis"],
        "padchest_exact": ["pulmonary fibrosis"],
        "openi": ["fibrosis"],
        "openi_exact": ["fibroses", "fibrosis", "pulmonary fibrosis", "pulmonary fibroses", "diffuse fibrosis",
                        "chronic fibrosis", "interstitial fibrosis"],
    },
    "Pleural_Thickening": {
        "nih": ["Pleural_Thickening"],
        "padchest": ["pleural thickening"],
        "padchest_exact": ["pleural thickening", "apical pleural thickening", "calcified pleural thickening"],
        "openi": ["pleural thickening"],
        "openi_exact": ["pleural thickening"],
    },
    "Hernia": {
        "nih": ["Hernia"],
        "padchest": ["hernia"],
        "padchest_exact": ["hiatal hernia"],
        "openi": ["hernia"],
        "openi_exact": ["hiatal hernia", "large hiatal hernia", "hernia, hiatal", "hiatus hernia", "hernia, hiatus",
                        "hernias", "morgagni hernia", "hernia, diaphragmatic", "bochdalek hernia"],
    },
    "Fracture": {
        "chexpert": ["Fracture"],
        "google": ["Fracture"],
        "padchest": ["fracture"],
        "padchest_exact": ["fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
                           "vertebral fracture"],
        "openi": ["fracture"],
        "openi_exact": ["fracture", "rib fracture", "rib fractures", "fractures, bone", "spinal fractures",
                        "displaced fractures", "clavicular fracture", "non-displaced fracture", "humeral fractures",
                        "pathologic fractures", "humeral fracture", "multiple fractures", "fracture healing",
                        "vertebral fracture", "stable fracture", "femoral neck fractures", "hip fractures",
                        "rotated fracture", "fourth rib fracture", "fractures, pathologic", "fracture, pathologic",
                        "fracture-dislocation"],
    },
    "Lung Opacity": {
        "chexpert": ["Lung Opacity"],
        "google": ["Airspace opacity"],
        "openi": ["opacity"],
        "openi_exact": ["opacity"],
    },
    "Lung Lesion": {
        "chexpert": ["Lung Lesion"],
        "openi": ["lesion"],
        "openi_exact": ["mass lesion"],
    },
    "Enlarged Cardiomediastinum": {"chexpert": ["Enlarged Cardiomediastinum"]},
    "Pleural Other": {"chexpert": ["Pleural Other"]},
    "Support Devices": {
        "chexpert": ["Support Devices"],
        "padchest": ["support devices", "device", "pacemaker"],
        "padchest_exact": ["pacemaker", "dual chamber device", "single chamber device", "electrical device"],
    },
    "Calcified Granuloma": {
        "openi": ["calcified granuloma"],
        "openi_exact": ["calcified granuloma"],
    },
    "Granuloma": {
        "padchest": ["granuloma"],
        "padchest_exact": ["granuloma", "calcified granuloma"],
        "openi": ["granuloma"],
        "openi_exact": ["granuloma", "granulomas", "lung granuloma", "apical granuloma", "pulmonary granuloma"],
    },
    "Flattened Diaphragm": {"padchest": ["flattened diaphragm"], "padchest_exact": ["flattened diaphragm"]},
    "Bronchiectasis": {"padchest": ["bronchiectasis"], "padchest_exact": ["bronchiectasis"]},
    "Aortic Elongation": {
        "padchest": ["aortic elongation"],
        "padchest_exact": ["aortic elongation", "supra aortic elongation", "descendent aortic elongation",
                           "ascendent aortic elongation"],
    },
    "Scoliosis": {"padchest": ["scoliosis"], "padchest_exact": ["scoliosis"]},
    "Hilar Enlargement": {
        "padchest": ["hilar enlargement", "adenopathy", "pulmonary artery enlargement"],
        "padchest_exact": ["hilar enlargement", "vascular hilar enlargement", "adenopathy", "calcified adenopathy",
                           "calcified mediastinal adenopathy", "pulmonary artery enlargement"],
    },
    "Tuberculosis": {"padchest": ["tuberculosis"], "padchest_exact": ["tuberculosis", "tuberculosis sequelae"]},
    "Air Trapping": {"padchest": ["air trapping"], "padchest_exact": ["air trapping"]},
    "Costophrenic Angle Blunting": {
        "padchest": ["costophrenic angle blunting"],
        "padchest_exact": ["costophrenic angle blunting"],
    },
    "Aortic Atheromatosis": {"padchest": ["aortic atheromatosis"], "padchest_exact": ["aortic atheromatosis"]},
    "Hemidiaphragm Elevation": {"padchest": ["hemidiaphragm elevation"], "padchest_exact": ["hemidiaphragm elevation"]},
    # the trailing quote selects PadChest terms that end in the word (as torchxrayvision does)
    "Tube": {
        "padchest": ["tube'", "stent'"],
        "padchest_exact": ["NSG tube", "endotracheal tube", "tracheostomy tube", "chest drain tube",
                           "ventriculoperitoneal drain tube", "gastrostomy tube", "nephrostomy tube",
                           "double J stent"],
    },
    NO_FINDING: {"nih": ["No Finding"], "chexpert": ["No Finding"]},
}

#: sources whose No Finding is derived as "no class of the source's vocabulary present".
DERIVED_NO_FINDING = ("padchest", "padchest_exact", "openi", "openi_exact")
#: sources whose terms are matched as substrings (the paper's labelling).
SUBSTRING_SOURCES = ("padchest", "openi")


def source_key(dataset: str, match: str = "paper") -> str:
    """Key of :data:`TABLE` for a dataset and match mode (``padchest`` + ``exact`` -> ``padchest_exact``)."""
    if match not in MATCH_MODES:
        raise ValueError(f"unknown match mode {match!r}; expected one of {MATCH_MODES}")
    base = {"nih_google": "google"}.get(dataset, dataset)
    return f"{base}_exact" if match == "exact" and f"{base}_exact" in _sources() else base


@lru_cache(maxsize=None)
def _sources() -> frozenset:
    return frozenset(s for per_class in TABLE.values() for s in per_class)


def synonyms(source: str) -> dict[str, list[str]]:
    """class -> synonyms of one source (only the classes the source has)."""
    if source not in _sources():
        raise ValueError(f"unknown label source {source!r}; expected one of {sorted(_sources())}")
    return {cls: list(per_source[source]) for cls, per_source in TABLE.items() if source in per_source}


def vocabulary(source: str) -> list[str]:
    """The classes a source can express, No Finding excluded (table order)."""
    return [c for c in synonyms(source) if c != NO_FINDING]


def term_classes(term: str, source: str) -> list[str]:
    """Classes one source term maps to (empty when it maps to none).

    Substring sources match the term as it appears in the raw string (PadChest terms are quoted,
    so ``'tube'`` patterns that end in a quote match terms ending in that word).
    """
    table = synonyms(source)
    if source in SUBSTRING_SOURCES:
        text = f"'{term}'" if source == "padchest" else term.lower()
        return [c for c, pats in table.items() if c != NO_FINDING and any(p in text for p in pats)]
    key = term.lower() if source.startswith("openi") else term
    return [c for c, syns in table.items() if key in syns]


def scheme_classes(scheme: str) -> list[str]:
    """Ordered class names of a scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    return list(SCHEMES[scheme])


@lru_cache(maxsize=None)
def known_terms() -> dict[str, frozenset]:
    """Published vocabularies of the free-text sources (PadChest ``Labels`` terms, OpenI MeSH
    automatic terms), used to tell terms that map to no class (expected: "kyphosis") from terms
    never seen in these datasets (reported as unknown; fatal with ``--strict``)."""
    path = Path(__file__).resolve().parent / "source_terms.json"
    raw = read_json(path, "source terms")
    out = {k: frozenset(v) for k, v in raw.items() if not k.startswith("_")}
    for source in ("nih", "chexpert", "google"):
        out[source] = frozenset(t for syns in synonyms(source).values() for t in syns)
    return out


def is_known(term: str, dataset: str) -> bool:
    """Whether a source term belongs to the dataset's published vocabulary."""
    base = {"nih_google": "google"}.get(dataset, dataset)
    return term in known_terms().get(base, frozenset())
