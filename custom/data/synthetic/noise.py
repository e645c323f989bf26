"""Label noise of the synthetic set (applied to the training and validation labels only).

Noise models (:func:`parse_noise`)
----------------------------------
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

import re

import numpy as np

from .labels import CLASSES, DISEASE_IDX, DISEASES, NF_IDX, load_label_stats


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


def split_noise_specs(value) -> list[str]:
    """Noise specs given on a command line, each checked and in canonical form (:func:`parse_noise`).

    Args:
        value: a comma-separated string, where a comma starts a new spec only before a letter
            (``"report,symmetric:0.2,bomd:0.2,0.2"`` is three specs), or a list or tuple of
            parts (fire turns ``a,b`` into a tuple; its parts are joined with commas first).

    Raises:
        ValueError: no spec, or a part that is not a noise spec.
    """
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    specs = [s.strip() for s in re.split(r",(?=\s*[A-Za-z])", str(value or "")) if s.strip()]
    if not specs:
        raise ValueError("no noise spec given; e.g. --noise report,symmetric:0.2")
    return [parse_noise(s)["spec"] for s in specs]


def noise_slug(spec: str) -> str:
    """A noise spec as a file-name part: ``symmetric:0.2`` -> ``symmetric02``, ``bomd:0.2,0.3`` -> ``bomd02-03``."""
    return spec.replace(":", "").replace(",", "-").replace(".", "")
