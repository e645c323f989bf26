"""Clean labels of the synthetic set: the real NIH ChestX-ray14 label combinations.

Clean multi-hot labels are sampled from the committed table of NIH label combinations
(``nih_label_stats.json``, derived by :mod:`.stats` from the public metadata), so prevalence,
imbalance and co-occurrence are those of NIH. The shifted test split re-weights the combinations by
iterative proportional fitting to PadChest's per-class prevalence.
"""

from __future__ import annotations

import copy
import functools
import pathlib

import numpy as np

from ...files import read_json
from ...labels import NIH14_CLASSES, NO_FINDING, disease_indices

#: Committed label statistics (see :mod:`custom.data.synthetic.stats`).
STATS_FILE = pathlib.Path(__file__).resolve().parent / "nih_label_stats.json"

CLASSES = list(NIH14_CLASSES)
NUM_CLASSES = len(CLASSES)
DISEASES = [CLASSES[i] for i in disease_indices(CLASSES)]
DISEASE_IDX = np.array(disease_indices(CLASSES))
NF_IDX = CLASSES.index(NO_FINDING)


@functools.lru_cache(maxsize=4)
def _load_stats(path) -> dict:
    return read_json(path, "label statistics")


def load_label_stats(path=None) -> dict:
    """The committed label statistics (``custom/data/synthetic/nih_label_stats.json``).

    Args:
        path: another statistics file written by :mod:`custom.data.synthetic.stats`.

    Returns:
        dict as written by :func:`custom.data.synthetic.stats.derive_label_stats`.
    """
    stats = copy.deepcopy(_load_stats(str(path or STATS_FILE)))
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
                         "python -m custom.data.synthetic.stats NIH_CSV PADCHEST_CSV OUTPUT_JSON")
    combos, counts = combo_table(stats)
    target = np.array([stats["padchest"]["prevalence"][c] for c in CLASSES])
    return fit_combo_weights(combos, counts, target)
