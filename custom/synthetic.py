"""Synthetic chest X-ray benchmark with real NIH label statistics and controlled label noise.

No real chest X-ray images are needed to train, validate and test the bundle: this module
writes small grayscale PNGs whose clean multi-label targets are sampled from the real NIH
ChestX-ray14 label combinations (so prevalence, imbalance and co-occurrence are those of
NIH), whose pixels carry one class-specific pattern per positive disease, and whose
training and validation labels are corrupted by a configurable noise model. Test labels
are clean. Everything is deterministic given ``seed``.

Splits
------
``training``, ``validation``
    clean labels sampled from the NIH combination distribution, then corrupted by the
    noise model ("label" is noisy, "clean_label" is the truth).
``test``
    same distribution and image style as training, clean labels.
``test_shifted``
    clean labels sampled from the NIH combinations re-weighted by iterative proportional
    fitting so that the 14 per-class prevalences match the PadChest test set (about 78%
    No Finding), rendered with a different image style (the ``"shifted"`` entry of
    :data:`STYLES`: lower contrast, brighter gamma, more noise, a slight blur). The class
    patterns are the same. This mimics the paper's cross-hospital test sets.

Each split draws from its own random streams (``numpy`` generators seeded with
``[seed, split, stream]``), so changing the size of one split does not change another.

Images
------
Coordinates are normalised: the image spans ``[-1, 1]`` in x (left to right) and y (top
to bottom), so lengths below are fractions of half the image width (0.1 = 1.6 px at 32 px).
The patient's right lung is on the image left, the heart bulges to the image right.

Background (:data:`ANATOMY`), with patient-level variation of position, size, aspect and
of every grey level: a soft-tissue body ellipse on a dark background; two dark elliptical
lung fields; a bright mediastinum and spine down the middle; a bright heart ellipse low
and to the image right; faint curved ribs across the lungs; then a per-image gamma and
contrast, Gaussian pixel noise and 8-bit quantisation (:data:`STYLES`).

Disease patterns (:data:`PATTERNS`): one per positive disease of the clean label; each
strength (grey levels on the 0-1 scale), size and position is drawn per image from the
ranges in :data:`PATTERNS`, so some cases are faint. Positions are random in the stated
zone of a randomly chosen lung.

Atelectasis
    a thin bright plate-like streak (half-length 0.12-0.22, tilted up to 25 degrees) in the
    middle or lower zone of one lung.
Cardiomegaly
    the heart ellipse is widened (x1.12-1.40) and up to 15% taller; the normal heart size
    varies by +-15%, so mild cases overlap with normal hearts.
Effusion (pair: Edema)
    basal haze: the base of one lung (both in 35% of cases) becomes brighter below a fluid
    level that rises towards the lateral chest wall (meniscus).
Infiltration (pair: Pneumonia)
    diffuse patchiness: 8-14 faint broad Gaussian blobs scattered over both lungs.
Mass (pair: Nodule)
    one bright round blob of radius 0.10-0.16.
Nodule (pair: Mass)
    the same blob with radius 0.04-0.075; a second nodule in 30% of cases.
Pneumonia (pair: Infiltration)
    focal patchiness: 5-8 stronger, smaller blobs clustered (sd 0.12) around one point of
    the middle or lower zone of one lung.
Pneumothorax
    in one lung the lung edge collapses towards the hilum (to 62-82% of its size): the rim
    between the chest wall and the collapsed edge gets darker and a thin bright pleural
    line marks the edge.
Edema (pair: Effusion)
    bilateral perihilar ("bat-wing") haze: a broad Gaussian brightening around both hila.
Emphysema
    hyperinflation: taller (x1.05-1.14), slightly wider and darker lung fields with low,
    flat bases.
Fibrosis
    a fine reticular net (a square grid texture of wavelength 0.11-0.15) over the lower and
    lateral parts of both lungs.
Pleural_Thickening
    a bright band along the lateral edge of one lung (both in 30% of cases).
Hernia
    a round retrocardiac opacity low in the midline with a dark air bubble inside.
No Finding
    no pattern.

The three similar pairs (Mass/Nodule, Infiltration/Pneumonia, Effusion/Edema) are also
the pairs that the ``report`` noise model confuses.

Noise models (:func:`parse_noise`; applied to training and validation labels only)
----------------------------------------------------------------------------------
``report`` (default, report-mining style), in this order, per image:

1. missed positives: each clean disease positive is dropped with the class rate
   :data:`REPORT_MISS_RATE` (15-45%; rarer and subtler findings are missed more);
2. pair confusion: each positive of a similar-pair class that was not missed is, with
   probability :data:`REPORT_PAIR_SWAP` (0.2), labelled as its partner instead (its own
   bit cleared, the partner's bit set);
3. false positives: each clean-negative disease cell that was not set by step 2 becomes
   positive with probability ``min(REPORT_FP_CAP, REPORT_FP_BASE *
   sqrt(prevalence / mean prevalence))`` (NIH prevalence of the 13 diseases);
4. No Finding is recomputed (1 iff no noisy disease) and then flipped with probability
   :data:`REPORT_NF_FLIP` (0.05), leaving that many images inconsistent.

About 6% of all cells differ from the clean labels (5.7% expected for NIH-like labels).

``symmetric:r``
    every cell (all 14, No Finding included) flips independently with probability ``r``.
    A stress setting: with imbalanced classes most noisy positives are wrong.
``bomd:ratio,p`` (or ``bomd`` for 0.2,0.2)
    the protocol of BoMD's public code: choose ``round(ratio * n)`` of the No Finding images
    and ``round(ratio * n)`` of the images with findings (seeded), flip each of the 14 bits of
    a chosen image with probability ``p``, then make No Finding consistent (if set, clear the
    diseases; if nothing is set, set it).
``none``
    noisy labels equal the clean labels.

The datalist's ``generator`` section records every parameter, the configured noise rates
(``noise_config``) and, per noisy split, ``measured_noise``: the overall cell flip rate,
per-class missed-positive rate ``P(noisy=0 | clean=1)`` and false-positive rate
``P(noisy=1 | clean=0)`` next to the values expected from the configuration and the
sampled clean labels, and (``mechanism``) the measured frequency of each configured event.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import pathlib
import secrets
import shutil
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from custom.labels import NIH14_CLASSES, NO_FINDING, disease_indices

#: Bump when a change alters the generated data; it is part of the cache key.
GENERATOR_VERSION = 1

#: Committed label statistics (see :mod:`custom.synthetic_stats`).
STATS_FILE = pathlib.Path(__file__).resolve().parent / "resources" / "nih_label_stats.json"

CLASSES = list(NIH14_CLASSES)
NUM_CLASSES = len(CLASSES)
DISEASES = [CLASSES[i] for i in disease_indices(CLASSES)]
DISEASE_IDX = np.array(disease_indices(CLASSES))
NF_IDX = CLASSES.index(NO_FINDING)

SPLITS = ("training", "validation", "test", "test_shifted")
NOISY_SPLITS = ("training", "validation")
_SPLIT_CODE = {"training": 1, "validation": 2, "test": 3, "test_shifted": 4}
_STREAM_CODE = {"labels": 1, "noise": 2, "images": 3}

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 512
#: Images are rendered in chunks of this many (part of the random-stream layout).
RENDER_CHUNK = 256

# --------------------------------------------------------------------------------------
# Noise model constants
# --------------------------------------------------------------------------------------

#: ``report`` model: probability that a clean positive is missed, per disease.
REPORT_MISS_RATE = {
    "Atelectasis": 0.30,
    "Cardiomegaly": 0.15,
    "Effusion": 0.15,
    "Infiltration": 0.30,
    "Mass": 0.20,
    "Nodule": 0.35,
    "Pneumonia": 0.45,
    "Pneumothorax": 0.20,
    "Edema": 0.30,
    "Emphysema": 0.25,
    "Fibrosis": 0.40,
    "Pleural_Thickening": 0.40,
    "Hernia": 0.35,
}
#: Similar pairs: similar image patterns, confused by the ``report`` model.
SIMILAR_PAIRS = (("Mass", "Nodule"), ("Infiltration", "Pneumonia"), ("Effusion", "Edema"))
#: ``report`` model: probability that a (not missed) positive of a pair class is
#: labelled as its partner instead.
REPORT_PAIR_SWAP = 0.20
#: ``report`` model: false-positive rate of a disease of mean prevalence.
REPORT_FP_BASE = 0.025
#: ``report`` model: upper bound of any class's false-positive rate.
REPORT_FP_CAP = 0.06
#: ``report`` model: probability that the recomputed No Finding bit is flipped.
REPORT_NF_FLIP = 0.05
#: ``bomd`` model defaults (noise_ratio, noise_p).
BOMD_DEFAULTS = (0.2, 0.2)

# --------------------------------------------------------------------------------------
# Image constants (normalised coordinates, grey levels on a 0-1 scale)
# --------------------------------------------------------------------------------------

#: Background anatomy; ``(lo, hi)`` are uniform per-image ranges.
ANATOMY = {
    "shift_sd": 0.04,  # body position jitter (x and y)
    "scale": (0.90, 1.08),  # overall size
    "aspect": (0.94, 1.06),  # width / height
    "outside_level": (0.02, 0.08),  # air around the body
    "body_level": (0.42, 0.56),  # soft tissue
    "body_axes": (0.92, 1.15),  # semi-axes of the body ellipse
    "lung_level": (0.14, 0.26),  # lung fields
    "lung_center": (0.38, -0.06),  # |x| and y of the lung centres
    "lung_axes": (0.27, 0.57),  # semi-axes of a lung ellipse
    "lung_size_jitter": (0.90, 1.10),  # per-lung extra size factor
    "edge": 0.05,  # softness of organ edges
    "mediastinum_level": (0.55, 0.68),
    "mediastinum_half_width": 0.12,
    "spine_level": (0.04, 0.09),  # added along the midline
    "heart_level": (0.64, 0.78),
    "heart_center": (0.12, 0.28),  # x, y
    "heart_axes": (0.30, 0.24),
    "heart_size": (0.85, 1.15),  # normal heart size variation
    "rib_level": (0.03, 0.07),
    "rib_spacing": (0.20, 0.26),
    "rib_curvature": (0.25, 0.45),
}

#: Class patterns (see the module docstring); ``(lo, hi)`` are uniform per-image ranges.
PATTERNS = {
    "Atelectasis": {"strength": (0.12, 0.24), "half_length": (0.12, 0.22),
                    "thickness": (0.025, 0.045), "tilt_deg": (-25.0, 25.0),
                    "zone_v": (0.0, 0.6)},
    "Cardiomegaly": {"width_factor": (1.12, 1.40), "height_factor": (1.00, 1.15)},
    "Effusion": {"strength": (0.05, 0.15), "level_v": (0.30, 0.65), "meniscus": (0.15, 0.35),
                 "edge": 0.06, "bilateral_p": 0.35},
    "Infiltration": {"strength": (0.04, 0.09), "count": (8, 14), "sigma": (0.05, 0.09)},
    "Mass": {"strength": (0.18, 0.32), "radius": (0.10, 0.16)},
    "Nodule": {"strength": (0.20, 0.35), "radius": (0.04, 0.075), "second_p": 0.3},
    "Pneumonia": {"strength": (0.07, 0.14), "count": (5, 8), "sigma": (0.04, 0.07),
                  "spread": 0.12, "zone_v": (-0.3, 0.6)},
    "Pneumothorax": {"darkening": (0.04, 0.10), "line": (0.05, 0.12),
                     "collapse": (0.62, 0.82), "line_width": 0.03},
    "Edema": {"strength": (0.05, 0.13), "sigma_x": (0.14, 0.20), "sigma_y": (0.20, 0.30),
              "hilum_u": -0.45},
    "Emphysema": {"height_factor": (1.05, 1.14), "width_factor": (1.00, 1.06),
                  "darkening": (0.02, 0.06)},
    "Fibrosis": {"strength": (0.12, 0.22), "wavelength": (0.11, 0.15)},
    "Pleural_Thickening": {"strength": (0.07, 0.16), "width": (0.035, 0.06),
                           "bilateral_p": 0.3},
    "Hernia": {"strength": (0.14, 0.24), "radius": (0.09, 0.14), "air": (0.06, 0.12),
               "center": (0.02, 0.45)},
}

#: Image styles: per-image gamma, contrast around mid-grey, additive offset, pixel noise
#: standard deviation, and Gaussian blur sigma in pixels (0: none).
STYLES = {
    "standard": {"gamma": (0.85, 1.15), "contrast": (0.90, 1.10), "offset": (-0.03, 0.03),
                 "noise": (0.010, 0.020), "blur_px": 0.0},
    "shifted": {"gamma": (0.70, 0.85), "contrast": (0.80, 0.90), "offset": (0.00, 0.05),
                "noise": (0.015, 0.030), "blur_px": 0.5},
}


# --------------------------------------------------------------------------------------
# Paths, parameters
# --------------------------------------------------------------------------------------


def default_cache_dir() -> pathlib.Path:
    """Folder for cached synthetic datasets.

    ``$NVUM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/nvum``, else ``~/.cache/nvum``.
    """
    if os.environ.get("NVUM_CACHE_DIR"):
        return pathlib.Path(os.environ["NVUM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nvum"
    return pathlib.Path.home() / ".cache" / "nvum"


def _rng(seed, split, stream):
    """Independent generator for one (split, stream) of a dataset seed."""
    return np.random.default_rng([seed, _SPLIT_CODE[split], _STREAM_CODE[stream]])


def _parse_fraction(text, spec, what):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"noise spec {spec!r}: {what} {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"noise spec {spec!r}: {what} must be in [0, 1], got {value}")
    return value


def parse_noise(spec: str) -> dict:
    """Parse a noise specification into the configured noise rates.

    Args:
        spec: ``"report"``, ``"symmetric:R"``, ``"bomd"``, ``"bomd:RATIO,P"`` or
            ``"none"`` (case and surrounding blanks ignored).

    Returns:
        dict with ``"model"`` and ``"spec"`` (canonical form) plus the model's rates:
        ``report``: ``miss_rate`` and ``fp_rate`` (per disease), ``pairs``,
        ``pair_swap_rate``, ``fp_base``, ``fp_cap``, ``no_finding_flip_rate``;
        ``symmetric``: ``rate``; ``bomd``: ``noise_ratio``, ``noise_p``.

    Raises:
        ValueError: naming ``spec`` when it is not one of the forms above.
    """
    if not isinstance(spec, str):
        raise ValueError(f"noise spec must be a string, got {spec!r}")
    text = spec.strip().lower()
    model, _, args = text.partition(":")
    model, args = model.strip(), args.strip()
    if model == "none" and not args:
        return {"model": "none", "spec": "none"}
    if model == "report" and not args:
        return _report_config()
    if model == "symmetric" and args and "," not in args:
        rate = _parse_fraction(args, spec, "rate")
        return {"model": "symmetric", "spec": f"symmetric:{rate!r}", "rate": rate}
    if model == "bomd":
        if not args:
            ratio, p = BOMD_DEFAULTS
        else:
            parts = [a.strip() for a in args.split(",")]
            if len(parts) != 2:
                raise ValueError(
                    f"noise spec {spec!r}: expected 'bomd:RATIO,P', e.g. 'bomd:0.2,0.2'")
            ratio = _parse_fraction(parts[0], spec, "noise_ratio")
            p = _parse_fraction(parts[1], spec, "noise_p")
        return {"model": "bomd", "spec": f"bomd:{ratio!r},{p!r}", "noise_ratio": ratio,
                "noise_p": p}
    raise ValueError(
        f"unknown noise spec {spec!r}: expected 'report', 'symmetric:R' (0 <= R <= 1), "
        "'bomd' / 'bomd:RATIO,P' or 'none'"
    )


def _report_config():
    prevalence = load_label_stats()["nih"]["prevalence"]
    prev = np.array([prevalence[c] for c in DISEASES])
    fp = np.minimum(REPORT_FP_CAP, REPORT_FP_BASE * np.sqrt(prev / prev.mean()))
    return {
        "model": "report",
        "spec": "report",
        "miss_rate": {c: REPORT_MISS_RATE[c] for c in DISEASES},
        "pairs": [list(p) for p in SIMILAR_PAIRS],
        "pair_swap_rate": REPORT_PAIR_SWAP,
        "fp_base": REPORT_FP_BASE,
        "fp_cap": REPORT_FP_CAP,
        "fp_rate": {c: round(float(r), 6) for c, r in zip(DISEASES, fp)},
        "no_finding_flip_rate": REPORT_NF_FLIP,
    }


# --------------------------------------------------------------------------------------
# Clean labels
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_stats_text(path):
    return pathlib.Path(path).read_text()


def load_label_stats(path=None) -> dict:
    """The committed label statistics (``custom/resources/nih_label_stats.json``).

    Args:
        path: another statistics file written by :mod:`custom.synthetic_stats`.

    Returns:
        dict as written by :func:`custom.synthetic_stats.derive_label_stats`.
    """
    stats = json.loads(_load_stats_text(str(path or STATS_FILE)))
    if stats.get("classes") != CLASSES:
        raise ValueError(f"{path or STATS_FILE}: classes {stats.get('classes')} != {CLASSES}")
    return stats


def combo_table(stats=None):
    """NIH label combinations as arrays.

    Args:
        stats: output of :func:`load_label_stats` (default: the committed file).

    Returns:
        tuple ``(combos, counts)``: ``combos`` is a ``(K, 14)`` uint8 multi-hot array in
        :data:`CLASSES` order, ``counts`` a ``(K,)`` int64 array of NIH image counts.
    """
    stats = stats or load_label_stats()
    index = {c: i for i, c in enumerate(CLASSES)}
    entries = stats["nih"]["combos"]
    combos = np.zeros((len(entries), NUM_CLASSES), dtype=np.uint8)
    for k, entry in enumerate(entries):
        combos[k, [index[c] for c in entry["labels"]]] = 1
    counts = np.array([e["count"] for e in entries], dtype=np.int64)
    return combos, counts


def sample_clean_labels(rng, n, weights=None, combos=None):
    """Sample clean multi-hot labels from a distribution over label combinations.

    Args:
        rng: ``numpy.random.Generator``.
        n: number of rows.
        weights: ``(K,)`` non-negative combination weights (normalised here); default:
            the NIH counts.
        combos: ``(K, 14)`` multi-hot combinations; default: the committed NIH table.

    Returns:
        ``(n, 14)`` uint8 array of 0/1 labels.
    """
    if combos is None:
        combos, counts = combo_table()
        weights = counts if weights is None else weights
    if weights is None:
        raise ValueError("weights are required when combos are given")
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (len(combos),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights must be ({len(combos)},) non-negative with a positive sum")
    idx = rng.choice(len(combos), size=int(n), p=p / p.sum())
    return combos[idx]


def fit_combo_weights(combos, weights, target_prevalence, iterations=500, tol=1e-9):
    """Re-weight combinations to match per-class prevalence (iterative proportional fitting).

    For each class in turn, the weights of combinations containing it are scaled so that the
    class's prevalence equals the target, and the others so that the total is unchanged;
    sweeps repeat until every prevalence is within ``tol`` of its target.

    Args:
        combos: ``(K, C)`` 0/1 array.
        weights: ``(K,)`` positive starting weights (e.g. the NIH counts).
        target_prevalence: ``(C,)`` target prevalences, each in (0, 1).
        iterations: maximum number of sweeps.
        tol: convergence tolerance on the prevalences.

    Returns:
        ``(K,)`` float64 weights summing to 1.
    """
    a = np.asarray(combos, dtype=bool)
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    t = np.asarray(target_prevalence, dtype=np.float64)
    for _ in range(iterations):
        for c in range(a.shape[1]):
            p = w[a[:, c]].sum()
            if 0.0 < p < 1.0:
                w[a[:, c]] *= t[c] / p
                w[~a[:, c]] *= (1.0 - t[c]) / (1.0 - p)
        w /= w.sum()
        if np.max(np.abs(w @ a - t)) < tol:
            break
    return w


def shifted_combo_weights(stats=None):
    """Combination weights of the shifted test split (PadChest-like prevalence).

    Returns:
        ``(K,)`` float64 probabilities over :func:`combo_table` rows.
    """
    stats = stats or load_label_stats()
    if "padchest" not in stats:
        raise ValueError("label statistics without a 'padchest' section: derive them with "
                         "python -m custom.synthetic_stats NIH_CSV PADCHEST_CSV OUTPUT_JSON")
    combos, counts = combo_table(stats)
    target = np.array([stats["padchest"]["prevalence"][c] for c in CLASSES])
    return fit_combo_weights(combos, counts, target)


# --------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------


def _partner_index():
    """(13,) index (into DISEASES) of each disease's pair partner, -1 if none."""
    partner = np.full(len(DISEASES), -1)
    for a, b in SIMILAR_PAIRS:
        partner[DISEASES.index(a)] = DISEASES.index(b)
        partner[DISEASES.index(b)] = DISEASES.index(a)
    return partner


def apply_noise(rng, clean, config):
    """Corrupt clean labels with a noise model.

    Args:
        rng: ``numpy.random.Generator``.
        clean: ``(N, 14)`` 0/1 array (uint8) in :data:`CLASSES` order.
        config: output of :func:`parse_noise`.

    Returns:
        tuple ``(noisy, events)``: ``noisy`` is a ``(N, 14)`` uint8 array, ``events`` a
        dict of per-mechanism counts (used for ``measured_noise["mechanism"]``).
    """
    clean = np.asarray(clean, dtype=np.uint8)
    model = config["model"]
    if model == "none":
        return clean.copy(), {}
    if model == "symmetric":
        flips = rng.random(clean.shape) < config["rate"]
        return (clean ^ flips).astype(np.uint8), {"flips": int(flips.sum())}
    if model == "bomd":
        return _bomd_noise(rng, clean, config["noise_ratio"], config["noise_p"])
    if model == "report":
        return _report_noise(rng, clean, config)
    raise ValueError(f"unknown noise model {model!r}")


def _report_noise(rng, clean, config):
    n = len(clean)
    pos = clean[:, DISEASE_IDX].astype(bool)
    miss = np.array([config["miss_rate"][c] for c in DISEASES])
    fp = np.array([config["fp_rate"][c] for c in DISEASES])
    partner = _partner_index()
    in_pair = partner >= 0
    # every draw is made for all cells, so the random stream does not depend on the labels
    u_miss, u_swap, u_fp = rng.random((3, n, len(DISEASES)))
    u_nf = rng.random(n)

    missed = pos & (u_miss < miss)
    swapped = pos & ~missed & in_pair & (u_swap < config["pair_swap_rate"])
    noisy = pos & ~missed & ~swapped
    received = np.zeros_like(noisy)
    for d in np.flatnonzero(in_pair):
        received[:, partner[d]] |= swapped[:, d]
    noisy |= received
    false_pos = ~pos & ~received & (u_fp < fp)
    noisy |= false_pos
    nf = ~noisy.any(axis=1)
    nf_flip = u_nf < config["no_finding_flip_rate"]
    out = np.zeros_like(clean)
    out[:, DISEASE_IDX] = noisy
    out[:, NF_IDX] = nf ^ nf_flip
    events = {
        "clean_positives": pos.sum(axis=0),
        "missed": missed.sum(axis=0),
        "not_missed_pair_positives": (pos & ~missed & in_pair).sum(),
        "swapped": swapped.sum(),
        "fp_eligible": (~pos & ~received).sum(axis=0),
        "false_positives": false_pos.sum(axis=0),
        "no_finding_flips": nf_flip.sum(),
    }
    return out, events


def _bomd_noise(rng, clean, ratio, p):
    n = len(clean)
    groups = [np.flatnonzero(clean[:, NF_IDX] == 1), np.flatnonzero(clean[:, NF_IDX] == 0)]
    chosen = np.zeros(n, dtype=bool)
    for group in groups:
        k = int(round(ratio * len(group)))
        chosen[rng.choice(group, size=k, replace=False)] = True
    flips = (rng.random(clean.shape) < p) & chosen[:, None]
    noisy = clean ^ flips
    nf_set = noisy[:, NF_IDX] == 1
    noisy[np.ix_(nf_set, DISEASE_IDX)] = 0
    empty = noisy.sum(axis=1) == 0
    noisy[empty, NF_IDX] = 1
    return noisy.astype(np.uint8), {"chosen": int(chosen.sum()), "bit_flips": int(flips.sum())}


def expected_noise_rates(clean, config):
    """Per-cell flip probabilities implied by a noise configuration for given clean labels.

    Args:
        clean: ``(N, 14)`` 0/1 array.
        config: output of :func:`parse_noise`.

    Returns:
        ``(N, 14)`` float64 array of ``P(noisy != clean)`` per cell, or ``None`` for the
        ``bomd`` model (no closed form is derived for it).
    """
    clean = np.asarray(clean, dtype=np.uint8)
    model = config["model"]
    if model == "none":
        return np.zeros(clean.shape)
    if model == "symmetric":
        return np.full(clean.shape, config["rate"])
    if model != "report":
        return None
    pos = clean[:, DISEASE_IDX].astype(bool)
    miss = np.array([config["miss_rate"][c] for c in DISEASES])
    fp = np.array([config["fp_rate"][c] for c in DISEASES])
    s = config["pair_swap_rate"]
    partner = _partner_index()
    in_pair = partner >= 0
    # probability that a swap from the partner sets this cell
    recv = np.zeros(pos.shape)
    for d in np.flatnonzero(in_pair):
        q = partner[d]
        recv[:, d] = pos[:, q] * (1 - miss[q]) * s
    lose = 1 - (1 - miss) * (1 - np.where(in_pair, s, 0.0))  # own positive not kept
    p_zero_if_pos = lose * (1 - recv)
    p_one_if_neg = 1 - (1 - recv) * (1 - fp)
    flip = np.where(pos, p_zero_if_pos, p_one_if_neg)
    # probability that no disease is noisy-positive; pairs are handled jointly
    p_zero = np.where(pos, p_zero_if_pos, 1 - p_one_if_neg)
    p_empty = np.prod(np.where(in_pair, 1.0, p_zero), axis=1)
    for a, b in SIMILAR_PAIRS:
        i, j = DISEASES.index(a), DISEASES.index(b)
        pa, pb = pos[:, i], pos[:, j]
        both_zero = np.select(
            [pa & pb, pa & ~pb, ~pa & pb],
            [miss[i] * miss[j], miss[i] * (1 - fp[j]), miss[j] * (1 - fp[i])],
            (1 - fp[i]) * (1 - fp[j]),
        )
        p_empty = p_empty * both_zero
    f = config["no_finding_flip_rate"]
    clean_nf = clean[:, NF_IDX] == 1
    p_nf_one = p_empty * (1 - f) + (1 - p_empty) * f
    out = np.zeros(clean.shape)
    out[:, DISEASE_IDX] = flip
    out[:, NF_IDX] = np.where(clean_nf, 1 - p_nf_one, p_nf_one)
    return out


def _rate(num, den):
    return round(float(num) / float(den), 6) if den else None


def measure_noise(clean, noisy, config, events=None):
    """Measured noise rates of one split, next to the rates the configuration implies.

    Args:
        clean, noisy: ``(N, 14)`` 0/1 arrays.
        config: output of :func:`parse_noise`.
        events: the ``events`` dict returned by :func:`apply_noise` (optional).

    Returns:
        JSON-serialisable dict: ``num_images``, ``cell_flip_rate``,
        ``expected_cell_flip_rate``, ``disease_cell_flip_rate``, ``no_finding_flip_rate``,
        ``no_finding_inconsistency`` (fraction with No Finding != "no noisy disease"),
        ``per_class`` (``clean_positives``, ``missed_positive_rate``,
        ``false_positive_rate``, their ``expected_*`` values, ``wrong_noisy_positive_rate``),
        and for ``report`` ``pair_partner_rate`` and ``mechanism`` (measured counterparts
        of ``miss_rate``, ``pair_swap_rate``, ``fp_rate``, ``no_finding_flip_rate``).
    """
    clean = np.asarray(clean, dtype=bool)
    noisy = np.asarray(noisy, dtype=bool)
    n = len(clean)
    flips = clean != noisy
    expected = expected_noise_rates(clean, config)
    out = {
        "num_images": int(n),
        "cell_flip_rate": _rate(flips.sum(), flips.size),
        "expected_cell_flip_rate": None if expected is None else _rate(expected.sum(), flips.size),
        "disease_cell_flip_rate": _rate(flips[:, DISEASE_IDX].sum(), n * len(DISEASES)),
        "no_finding_flip_rate": _rate(flips[:, NF_IDX].sum(), n),
        "no_finding_inconsistency": _rate(
            (noisy[:, NF_IDX] == noisy[:, DISEASE_IDX].any(axis=1)).sum(), n),
    }
    per_class = {}
    for c, name in enumerate(CLASSES):
        p, q = clean[:, c], noisy[:, c]
        row = {
            "clean_positives": int(p.sum()),
            "noisy_positives": int(q.sum()),
            "missed_positive_rate": _rate((p & ~q).sum(), p.sum()),
            "false_positive_rate": _rate((~p & q).sum(), (~p).sum()),
            "wrong_noisy_positive_rate": _rate((~p & q).sum(), q.sum()),
        }
        if expected is not None:
            row["expected_missed_positive_rate"] = _rate(expected[p, c].sum(), p.sum())
            row["expected_false_positive_rate"] = _rate(expected[~p, c].sum(), (~p).sum())
        per_class[name] = row
    out["per_class"] = per_class
    if config["model"] == "report":
        miss = config["miss_rate"]
        fp = config["fp_rate"]
        s = config["pair_swap_rate"]
        partner_rate = {}
        for a, b in SIMILAR_PAIRS:
            for x, y in ((a, b), (b, a)):
                i, j = CLASSES.index(x), CLASSES.index(y)
                sel = clean[:, i] & ~clean[:, j]
                swap = (1 - miss[x]) * s
                partner_rate[f"{x}->{y}"] = {
                    "measured": _rate(noisy[sel, j].sum(), sel.sum()),
                    "expected": round(swap + (1 - swap) * fp[y], 6),
                    "num": int(sel.sum()),
                }
        out["pair_partner_rate"] = partner_rate
        if events:
            out["mechanism"] = {
                "miss_rate": {name: _rate(events["missed"][k], events["clean_positives"][k])
                              for k, name in enumerate(DISEASES)},
                "pair_swap_rate": _rate(events["swapped"], events["not_missed_pair_positives"]),
                "fp_rate": {name: _rate(events["false_positives"][k], events["fp_eligible"][k])
                            for k, name in enumerate(DISEASES)},
                "no_finding_flip_rate": _rate(events["no_finding_flips"], n),
            }
    elif events:
        out["mechanism"] = {k: int(v) for k, v in events.items()}
    return out


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _u(rng, bounds, size):
    lo, hi = bounds
    return rng.uniform(lo, hi, size).astype(np.float32)


def _col(v):
    """(n,) -> (n, 1, 1) for broadcasting against (H, W) grids."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _soft_inside(r, edge):
    """Smooth indicator of ``r < 1`` (0.5 on the boundary)."""
    return 0.5 - 0.5 * np.tanh((r - 1.0) / (2.0 * edge))


def _ellipse_r(x, y, cx, cy, a, b):
    return np.sqrt(((x - _col(cx)) / _col(a)) ** 2 + ((y - _col(cy)) / _col(b)) ** 2)


def _gauss(x, y, cx, cy, sx, sy=None):
    sy = sx if sy is None else sy
    return np.exp(-0.5 * (((x - _col(cx)) / _col(sx)) ** 2 + ((y - _col(cy)) / _col(sy)) ** 2))


def _grid(size):
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y  # (H, W) each


def _sample_anatomy(rng, n):
    """Per-image anatomy parameters: dict of (n,) float32 arrays (lungs: (n, 2))."""
    A = ANATOMY
    scale = _u(rng, A["scale"], n)
    aspect = _u(rng, A["aspect"], n)
    sx, sy = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
    cx = rng.normal(0.0, A["shift_sd"], n).astype(np.float32)
    cy = rng.normal(0.0, A["shift_sd"], n).astype(np.float32)
    lung_jit = _u(rng, A["lung_size_jitter"], (n, 2))
    heart_size = _u(rng, A["heart_size"], n)
    side = np.array([-1.0, 1.0], dtype=np.float32)  # image-left lung, image-right lung
    geo = {
        "cx": cx, "cy": cy, "sx": sx, "sy": sy,
        "outside": _u(rng, A["outside_level"], n),
        "body": _u(rng, A["body_level"], n),
        "body_a": A["body_axes"][0] * sx, "body_b": A["body_axes"][1] * sy,
        "lung": _u(rng, A["lung_level"], n),
        "lung_cx": cx[:, None] + side * A["lung_center"][0] * sx[:, None],
        "lung_cy": cy[:, None] + A["lung_center"][1] * sy[:, None] + np.zeros((n, 2), np.float32),
        "lung_a": A["lung_axes"][0] * sx[:, None] * lung_jit,
        "lung_b": A["lung_axes"][1] * sy[:, None] * lung_jit,
        "mediastinum": _u(rng, A["mediastinum_level"], n),
        "spine": _u(rng, A["spine_level"], n),
        "heart": _u(rng, A["heart_level"], n),
        "heart_cx": cx + A["heart_center"][0] * sx,
        "heart_cy": cy + A["heart_center"][1] * sy,
        "heart_a": A["heart_axes"][0] * sx * heart_size,
        "heart_b": A["heart_axes"][1] * sy * heart_size,
        "rib": _u(rng, A["rib_level"], n),
        "rib_spacing": _u(rng, A["rib_spacing"], n) * sy,
        "rib_curv": _u(rng, A["rib_curvature"], n),
        "rib_phase": _u(rng, (0.0, 2 * np.pi), n),
    }
    return geo


def _modify_anatomy(rng, geo, labels):
    """Apply the patterns that change the anatomy (Cardiomegaly, Emphysema) in place."""
    idx = np.flatnonzero(labels[:, CLASSES.index("Cardiomegaly")])
    if len(idx):
        P = PATTERNS["Cardiomegaly"]
        wf, hf = _u(rng, P["width_factor"], len(idx)), _u(rng, P["height_factor"], len(idx))
        geo["heart_a"][idx] *= wf
        geo["heart_b"][idx] *= hf
        geo["heart_cy"][idx] -= (hf - 1) * geo["heart_b"][idx] * 0.5  # grows upwards
    idx = np.flatnonzero(labels[:, CLASSES.index("Emphysema")])
    if len(idx):
        P = PATTERNS["Emphysema"]
        hf, wf = _u(rng, P["height_factor"], len(idx)), _u(rng, P["width_factor"], len(idx))
        geo["lung_b"][idx] *= hf[:, None]
        geo["lung_a"][idx] *= wf[:, None]
        geo["lung_cy"][idx] += (0.5 * (hf - 1))[:, None] * geo["lung_b"][idx]  # flat, low domes
        geo["lung"][idx] -= _u(rng, P["darkening"], len(idx))


def _lung_masks(x, y, geo, idx=None):
    """Soft masks of both lungs: (n, 2, H, W) float32 and the radial coordinate r."""
    sel = slice(None) if idx is None else idx
    e = ANATOMY["edge"]
    masks, radii = [], []
    for k in range(2):
        r = _ellipse_r(x, y, geo["lung_cx"][sel, k], geo["lung_cy"][sel, k],
                       geo["lung_a"][sel, k], geo["lung_b"][sel, k])
        radii.append(r)
        masks.append(_soft_inside(r, e))
    return np.stack(masks, axis=1), np.stack(radii, axis=1)


def _render_background(x, y, geo):
    """Chest background: (n, H, W) float32 grey levels."""
    e = ANATOMY["edge"]
    body_r = _ellipse_r(x, y, geo["cx"], geo["cy"] + 0.05, geo["body_a"], geo["body_b"])
    body = _soft_inside(body_r, e)
    img = _col(geo["outside"]) + body * _col(geo["body"] - geo["outside"])
    # mediastinum and spine: a bright vertical band down the middle
    half = ANATOMY["mediastinum_half_width"] * geo["sx"]
    band = np.exp(-0.5 * ((x - _col(geo["cx"])) / _col(half)) ** 4) * body
    img = img + band * _col(geo["mediastinum"] - geo["body"])
    lungs, _ = _lung_masks(x, y, geo)
    lung = np.clip(lungs.sum(axis=1), 0.0, 1.0) * (1.0 - 0.6 * band)
    # ribs: faint curved bands inside the lungs, bending down laterally
    dx = x - _col(geo["cx"])
    phase = 2 * np.pi * (y - _col(geo["rib_curv"]) * dx ** 2) / _col(geo["rib_spacing"])
    ribs = (0.5 + 0.5 * np.cos(phase + _col(geo["rib_phase"]))) ** 3
    img = img * (1 - lung) + lung * (_col(geo["lung"]) + _col(geo["rib"]) * ribs)
    img = img + _col(geo["spine"]) * np.exp(-0.5 * (dx / _col(0.05 * geo["sx"])) ** 2) * body
    heart = _soft_inside(_ellipse_r(x, y, geo["heart_cx"], geo["heart_cy"], geo["heart_a"],
                                    geo["heart_b"]), e)
    img = img * (1 - heart) + heart * _col(geo["heart"])
    return img


def _lung_points(rng, geo, idx, side, u_range, v_range, margin=0.8):
    """Random points inside the given lung of images ``idx``.

    ``u`` is the lateral coordinate (-1 medial, +1 lateral) and ``v`` the vertical one
    (-1 apex, +1 base) in lung-ellipse units; points are pulled inside radius ``margin``.

    Returns:
        tuple of (n,) float32 arrays ``(x, y)``.
    """
    n = len(idx)
    u, v = _u(rng, u_range, n), _u(rng, v_range, n)
    r = np.sqrt(u ** 2 + v ** 2)
    shrink = np.where(r > margin, margin / np.maximum(r, 1e-6), 1.0)
    u, v = u * shrink, v * shrink
    sign = np.where(side == 0, -1.0, 1.0)
    px = geo["lung_cx"][idx, side] + sign * u * geo["lung_a"][idx, side]
    py = geo["lung_cy"][idx, side] + v * geo["lung_b"][idx, side]
    return px.astype(np.float32), py.astype(np.float32)


def _blob(x, y, cx, cy, radius):
    """Round opacity with a soft edge, 1 inside: (n, H, W)."""
    r = np.sqrt((x - _col(cx)) ** 2 + (y - _col(cy)) ** 2) / _col(radius)
    return _soft_inside(r, 0.25)


def _pattern(name, rng, x, y, geo, idx):
    """Additive grey-level pattern of class ``name`` for the images ``idx``: (n, H, W)."""
    P = PATTERNS[name]
    n = len(idx)
    side = rng.integers(0, 2, n)
    if name == "Atelectasis":
        px, py = _lung_points(rng, geo, idx, side, (-0.5, 0.5), P["zone_v"])
        theta = np.deg2rad(_u(rng, P["tilt_deg"], n))
        half, thick = _u(rng, P["half_length"], n), _u(rng, P["thickness"], n)
        dx, dy = x - _col(px), y - _col(py)
        along = dx * _col(np.cos(theta)) + dy * _col(np.sin(theta))
        across = -dx * _col(np.sin(theta)) + dy * _col(np.cos(theta))
        streak = (np.exp(-0.5 * (across / _col(thick)) ** 2)
                  * _soft_inside(np.abs(along) / _col(half), 0.15))
        return _col(_u(rng, P["strength"], n)) * streak
    if name == "Effusion":
        lungs, _ = _lung_masks(x, y, geo, idx)
        both = rng.random(n) < P["bilateral_p"]
        out = np.zeros((n,) + x.shape, np.float32)
        strength = _u(rng, P["strength"], n)
        for k in range(2):
            on = (both | (side == k)).astype(np.float32)
            level = geo["lung_cy"][idx, k] + _u(rng, P["level_v"], n) * geo["lung_b"][idx, k]
            sign = -1.0 if k == 0 else 1.0
            lateral = (x - _col(geo["lung_cx"][idx, k])) * sign / _col(geo["lung_a"][idx, k])
            rise = _u(rng, P["meniscus"], n) * geo["lung_b"][idx, k]
            surface = _col(level) - _col(rise) * np.clip(lateral, 0, 1) ** 2
            fluid = 0.5 + 0.5 * np.tanh((y - surface) / (2 * P["edge"]))
            out += _col(on * strength) * fluid * lungs[:, k]
        return out
    if name in ("Infiltration", "Pneumonia"):
        out = np.zeros((n,) + x.shape, np.float32)
        lo, hi = P["count"]
        counts = rng.integers(lo, hi + 1, n)
        if name == "Pneumonia":
            cx, cy = _lung_points(rng, geo, idx, side, (-0.4, 0.6), P["zone_v"], margin=0.7)
        for j in range(hi):
            on = (j < counts).astype(np.float32)
            if name == "Infiltration":
                s = rng.integers(0, 2, n)
                bx, by = _lung_points(rng, geo, idx, s, (-0.9, 0.9), (-0.9, 0.9))
            else:
                off = rng.normal(0.0, P["spread"], (2, n)).astype(np.float32)
                bx, by = cx + off[0], cy + off[1]
            amp = _u(rng, P["strength"], n) * on
            out += _col(amp) * _gauss(x, y, bx, by, _u(rng, P["sigma"], n))
        lungs, _ = _lung_masks(x, y, geo, idx)
        return out * np.clip(lungs.sum(axis=1), 0, 1)
    if name in ("Mass", "Nodule"):
        px, py = _lung_points(rng, geo, idx, side, (-0.7, 0.8), (-0.7, 0.7), margin=0.75)
        out = _col(_u(rng, P["strength"], n)) * _blob(x, y, px, py, _u(rng, P["radius"], n))
        if name == "Nodule":
            second = (rng.random(n) < P["second_p"]).astype(np.float32)
            other_side = rng.integers(0, 2, n)
            qx, qy = _lung_points(rng, geo, idx, other_side, (-0.7, 0.8), (-0.7, 0.7), 0.75)
            amp = _u(rng, P["strength"], n) * second
            out += _col(amp) * _blob(x, y, qx, qy, _u(rng, P["radius"], n))
        return out
    if name == "Pneumothorax":
        k = side
        lcx, lcy = geo["lung_cx"][idx, k], geo["lung_cy"][idx, k]
        la, lb = geo["lung_a"][idx, k], geo["lung_b"][idx, k]
        sign = np.where(k == 0, -1.0, 1.0).astype(np.float32)
        collapse = _u(rng, P["collapse"], n)
        # collapsed lung: shrunk towards the hilum (medial, slightly low)
        ccx = lcx - sign * (1 - collapse) * la
        ccy = lcy + 0.5 * (1 - collapse) * lb
        r_lung = _ellipse_r(x, y, lcx, lcy, la, lb)
        r_coll = _ellipse_r(x, y, ccx, ccy, collapse * la, collapse * lb)
        lung = _soft_inside(r_lung, ANATOMY["edge"])
        rim = lung * (1 - _soft_inside(r_coll, ANATOMY["edge"]))
        line = np.exp(-0.5 * ((r_coll - 1) * _col(collapse * la) / P["line_width"]) ** 2) * lung
        return -_col(_u(rng, P["darkening"], n)) * rim + _col(_u(rng, P["line"], n)) * line
    if name == "Edema":
        lungs, _ = _lung_masks(x, y, geo, idx)
        sx_, sy_ = _u(rng, P["sigma_x"], n), _u(rng, P["sigma_y"], n)
        amp = _u(rng, P["strength"], n)
        out = np.zeros((n,) + x.shape, np.float32)
        for k in range(2):
            sign = -1.0 if k == 0 else 1.0
            hx = geo["lung_cx"][idx, k] + sign * P["hilum_u"] * geo["lung_a"][idx, k]
            hy = geo["lung_cy"][idx, k] + 0.05 * geo["lung_b"][idx, k]
            out += _gauss(x, y, hx, hy, sx_, sy_) * lungs[:, k]
        return _col(amp) * out
    if name == "Fibrosis":
        lungs, _ = _lung_masks(x, y, geo, idx)
        wl = _u(rng, P["wavelength"], n)
        ph = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)
        net = 0.25 * (np.cos(2 * np.pi * x / _col(wl) + _col(ph[0]))
                      + np.cos(2 * np.pi * y / _col(wl) + _col(ph[1]))) ** 2
        out = np.zeros((n,) + x.shape, np.float32)
        for k in range(2):
            sign = -1.0 if k == 0 else 1.0
            lateral = (x - _col(geo["lung_cx"][idx, k])) * sign / _col(geo["lung_a"][idx, k])
            lower = (y - _col(geo["lung_cy"][idx, k])) / _col(geo["lung_b"][idx, k])
            weight = np.clip(0.5 + 0.6 * lower + 0.4 * lateral, 0, 1)
            out += weight * lungs[:, k]
        return _col(_u(rng, P["strength"], n)) * net * out
    if name == "Pleural_Thickening":
        both = rng.random(n) < P["bilateral_p"]
        width = _u(rng, P["width"], n)
        amp = _u(rng, P["strength"], n)
        out = np.zeros((n,) + x.shape, np.float32)
        for k in range(2):
            on = (both | (side == k)).astype(np.float32)
            sign = -1.0 if k == 0 else 1.0
            lcx, lcy = geo["lung_cx"][idx, k], geo["lung_cy"][idx, k]
            la, lb = geo["lung_a"][idx, k], geo["lung_b"][idx, k]
            r = _ellipse_r(x, y, lcx, lcy, la, lb)
            lateral = (x - _col(lcx)) * sign / _col(la)
            band = np.exp(-0.5 * ((r - 0.97) * _col(la) / _col(width)) ** 2)
            out += _col(on * amp) * band * np.clip(2.5 * lateral - 0.25, 0, 1)
        return out
    if name == "Hernia":
        jitter_x = rng.normal(0, 0.04, n).astype(np.float32)
        jitter_y = rng.normal(0, 0.03, n).astype(np.float32)
        hx = geo["cx"][idx] + P["center"][0] * geo["sx"][idx] + jitter_x
        hy = geo["cy"][idx] + P["center"][1] * geo["sy"][idx] + jitter_y
        radius = _u(rng, P["radius"], n)
        body = _blob(x, y, hx, hy, radius)
        air = _blob(x, y, hx + 0.2 * radius, hy - 0.3 * radius, 0.45 * radius)
        return _col(_u(rng, P["strength"], n)) * body - _col(_u(rng, P["air"], n)) * air
    raise KeyError(name)


def _blur(img, sigma):
    """Separable Gaussian blur of (n, H, W) images, sigma in pixels."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        p = np.pad(img, pad, mode="edge")
        size = img.shape[axis]
        img = sum(w * np.take(p, np.arange(i, i + size), axis=axis) for i, w in enumerate(k))
    return img


def render_images(rng, labels, image_size=32, style="standard"):
    """Render synthetic chest X-rays for clean labels.

    Args:
        rng: ``numpy.random.Generator``.
        labels: ``(N, 14)`` 0/1 clean labels in :data:`CLASSES` order; one pattern is drawn
            per positive disease.
        image_size: output height and width in pixels.
        style: a key of :data:`STYLES`.

    Returns:
        ``(N, image_size, image_size)`` uint8 array.
    """
    labels = np.asarray(labels)
    n = len(labels)
    x, y = _grid(image_size)
    geo = _sample_anatomy(rng, n)
    _modify_anatomy(rng, geo, labels)
    img = _render_background(x, y, geo)
    for name in DISEASES:
        if name in ("Cardiomegaly", "Emphysema"):
            continue
        idx = np.flatnonzero(labels[:, CLASSES.index(name)])
        if len(idx):
            img[idx] += _pattern(name, rng, x, y, geo, idx)
    S = STYLES[style]
    img = np.clip(img, 0.0, 1.0) ** _col(_u(rng, S["gamma"], n))
    img = (img - 0.5) * _col(_u(rng, S["contrast"], n)) + 0.5 + _col(_u(rng, S["offset"], n))
    if S["blur_px"] > 0:
        img = _blur(img, S["blur_px"])
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * _col(_u(rng, S["noise"], n))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------


def _check_params(seed, sizes, image_size):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if sum(sizes.values()) == 0:
        raise ValueError("all split sizes are 0: nothing to generate")
    if (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise ValueError(
            f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], "
            f"got {image_size!r}")


def _prevalence(labels):
    mean = labels.mean(axis=0) if len(labels) else np.zeros(NUM_CLASSES)
    return {c: round(float(p), 6) for c, p in zip(CLASSES, mean)}


def _generate(root, *, seed=0, num_training=4000, num_validation=1000, num_test=5000,
              num_test_shifted=5000, image_size=32, noise="report", progress=True):
    sizes = {"num_training": num_training, "num_validation": num_validation,
             "num_test": num_test, "num_test_shifted": num_test_shifted}
    _check_params(seed, sizes, image_size)
    config = parse_noise(noise)
    seed, image_size = int(seed), int(image_size)
    stats = load_label_stats()
    combos, counts = combo_table(stats)
    weights = {"in_distribution": counts.astype(np.float64),
               "shifted": shifted_combo_weights(stats)}
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "datalist.json"
    path.unlink(missing_ok=True)  # an interrupted overwrite must not look complete

    datalist = {"classes": list(CLASSES)}
    measured, prevalence = {}, {}
    bar = tqdm(total=sum(sizes.values()), desc="synthetic images", unit="img",
               file=sys.stderr, disable=not progress)
    patient = 0
    for split, n in zip(SPLITS, sizes.values()):
        shifted = split == "test_shifted"
        clean = sample_clean_labels(_rng(seed, split, "labels"), n,
                                    weights["shifted" if shifted else "in_distribution"], combos)
        if split in NOISY_SPLITS:
            noisy, events = apply_noise(_rng(seed, split, "noise"), clean, config)
            measured[split] = measure_noise(clean, noisy, config, events)
        else:
            noisy = clean
        prevalence[split] = _prevalence(clean)
        (root / split).mkdir(exist_ok=True)
        rng = _rng(seed, split, "images")
        items = []
        for start in range(0, n, RENDER_CHUNK):
            stop = min(n, start + RENDER_CHUNK)
            images = render_images(rng, clean[start:stop], image_size,
                                   "shifted" if shifted else "standard")
            for i, image in zip(range(start, stop), images):
                rel = f"{split}/{i:06d}.png"
                Image.fromarray(image).save(root / rel, format="PNG")
                items.append({"image": rel, "label": noisy[i].tolist(),
                              "clean_label": clean[i].tolist(), "patient": f"syn-{patient:06d}"})
                patient += 1
            bar.update(stop - start)
        datalist[split] = items
    bar.close()

    datalist["generator"] = {
        "name": "nvum-synthetic-cxr",
        "version": GENERATOR_VERSION,
        "seed": seed,
        **sizes,
        "image_size": image_size,
        "noise": config["spec"],
        "noise_config": config,
        "label_stats": {
            "file": STATS_FILE.name,
            "sha256": hashlib.sha256(STATS_FILE.read_bytes()).hexdigest(),
            "nih_prevalence": stats["nih"]["prevalence"],
            "padchest_prevalence": stats["padchest"]["prevalence"],
        },
        "clean_prevalence": prevalence,
        "styles": {"in_distribution": STYLES["standard"], "test_shifted": STYLES["shifted"]},
        "measured_noise": measured,
    }
    tmp = root / ".datalist.json.tmp"
    tmp.write_text(_dumps_datalist(datalist))
    os.replace(tmp, path)  # the datalist appears last: its presence means "complete"
    return path


def _dumps_datalist(datalist):
    """JSON text with one data item per line and an indented ``generator`` section."""
    parts = []
    for key, value in datalist.items():
        if key in SPLITS:
            body = ",\n  ".join(json.dumps(item) for item in value)
            text = f"[\n  {body}\n ]" if value else "[]"
        else:
            text = json.dumps(value, indent=1).replace("\n", "\n ")
        parts.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def generate_synthetic(root, *, seed=0, num_training=4000, num_validation=1000, num_test=5000,
                       num_test_shifted=5000, image_size=32, noise="report",
                       progress=True) -> pathlib.Path:
    """Write a synthetic dataset (PNGs and ``datalist.json``) into ``root``.

    Args:
        root: output folder (created if needed; existing files of the same names are
            overwritten).
        seed: non-negative integer; the dataset is a deterministic function of all arguments
            except ``progress``.
        num_training, num_validation, num_test, num_test_shifted: split sizes.
        image_size: image height and width in pixels (16-512).
        noise: noise specification, see :func:`parse_noise`.
        progress: show a progress bar on stderr.

    Returns:
        path of ``root/datalist.json``, written last.

    Raises:
        ValueError: on invalid sizes, seed or noise specification.
    """
    path = _generate(root, seed=seed, num_training=num_training, num_validation=num_validation,
                     num_test=num_test, num_test_shifted=num_test_shifted,
                     image_size=image_size, noise=noise, progress=progress)
    print(f"synthetic dataset written to {path.parent}")
    return path


#: Dataset parameters (everything except ``root`` and ``progress``) and their defaults.
DEFAULT_PARAMS = {k: v.default for k, v in inspect.signature(generate_synthetic).parameters.items()
                  if k not in ("root", "progress")}


def _canonical_params(params):
    defaults = DEFAULT_PARAMS
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(f"unknown synthetic dataset parameter(s): {unknown}")
    out = {**defaults, **params}
    _check_params(out["seed"], {k: out[k] for k in out if k.startswith("num_")}, out["image_size"])
    out = {k: int(v) if k != "noise" else parse_noise(v)["spec"] for k, v in out.items()}
    return out


def _params_hash(params):
    key = json.dumps({**params, "version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_synthetic(root=None, **params) -> pathlib.Path:
    """Return the datalist of a synthetic dataset, generating it only when missing.

    Args:
        root: dataset folder; ``None`` means ``default_cache_dir() / "synthetic-<hash>"``
            where ``<hash>`` identifies the parameters (and :data:`GENERATOR_VERSION`).
        **params: keyword arguments of :func:`generate_synthetic` (``progress`` included).

    Returns:
        path of ``root/datalist.json``.

    The dataset is generated into a temporary sibling folder that is renamed to ``root``
    only when complete, so an interrupted run never leaves a folder with a datalist.

    Raises:
        ValueError: when an explicit ``root`` holds a dataset made with other parameters,
            or exists with other content but no ``datalist.json``.
    """
    progress = params.pop("progress", True)
    canonical = _canonical_params(params)
    root = (default_cache_dir() / f"synthetic-{_params_hash(canonical)}" if root is None
            else pathlib.Path(root).expanduser())
    path = root / "datalist.json"
    if path.exists():
        _check_existing(path, canonical)
        return path
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists without datalist.json; remove it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _generate(tmp, progress=progress, **canonical)
        try:
            if root.exists():
                root.rmdir()  # empty folder
            os.rename(tmp, root)
        except OSError:
            if not path.exists():  # not a concurrent run finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"synthetic dataset written to {root}")
    return path


def _check_existing(path, canonical):
    try:
        found = json.loads(path.read_text())["generator"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a synthetic datalist: {exc}") from None
    differ = {k: (found.get(k), v) for k, v in canonical.items() if found.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: found {a!r}, requested {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was generated with other parameters ({detail}); "
                         "remove the folder or choose another root")
