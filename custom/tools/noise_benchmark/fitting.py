"""How many wrong training labels a network has fitted: the memorisation the method exists to stop.

The synthetic generator knows every training label's truth (``clean_label``). A training label is
*wrong* where the noisy label differs from it. The network *fits* a wrong label when its
prediction for that image and class sides with the noisy label.

"Sides with" needs a decision threshold per class. A fixed 0.5 would count almost every missed
positive of a rare class as fitted from the first step (the network predicts a low probability
for rare classes everywhere), so the threshold of class ``c`` is set where the network predicts
as many positives among the training images as the noisy labels hold (the noisy prevalence
``pi_c``): the ``pi_c`` share of images with the highest scores are called positive. A network
that has learnt the clean signal ranks a false positive low and a missed positive high, so it
fits neither; one that memorises the noisy labels ranks them where the noisy labels put them.
Two reference levels put a share in context (:func:`reference_levels`): *chance*, the share that
scores carrying no information fit (in expectation ``k_c / N`` of a class's false positives and
``1 - k_c / N`` of its missed positives, ``k_c`` the images called positive), and the share that a
perfect ranking by the clean labels fits (the floor a network that learnt only the truth reaches).

The two kinds are reported apart (``false_positive``: noisy 1, truth 0; ``missed``: noisy 0,
truth 1), and together (``all``), over the 13 diseases (No Finding is a function of the others).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def predicted_positive(scores, noisy_labels) -> np.ndarray:
    """(N, C) bool: per class, the images whose score is among the highest ``round(pi_c * N)``, with
    ``pi_c`` the share of noisy positives of class ``c`` (ties broken by image order)."""
    scores = np.asarray(scores, dtype=np.float64)
    noisy = np.asarray(noisy_labels).astype(bool)
    if scores.shape != noisy.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {noisy.shape} must both be (N, C)")
    out = np.zeros(scores.shape, dtype=bool)
    for c in range(scores.shape[1]):
        k = int(noisy[:, c].sum())
        if k:
            out[np.argsort(-scores[:, c], kind="stable")[:k], c] = True
    return out


def wrong_labels_fitted(scores, noisy_labels, clean_labels, classes: Sequence[int] | None = None) -> dict:
    """Fraction of the wrong training labels that the network's scores side with (module docstring).

    Args:
        scores: (N, C) logits or probabilities of the training images.
        noisy_labels: (N, C) 0/1 training labels (what the network was trained on).
        clean_labels: (N, C) 0/1 true labels.
        classes: the class columns counted (default: all).

    Returns:
        dict with ``all``, ``false_positive`` and ``missed`` (fractions in [0, 1], NaN when there
        is no wrong label of that kind) and ``n_wrong``, ``n_false_positive``, ``n_missed``.
    """
    noisy = np.asarray(noisy_labels).astype(bool)
    clean = np.asarray(clean_labels).astype(bool)
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy labels {noisy.shape} and clean labels {clean.shape} differ in shape")
    cols = list(range(noisy.shape[1])) if classes is None else list(classes)
    positive = predicted_positive(scores, noisy)[:, cols]
    noisy, clean = noisy[:, cols], clean[:, cols]
    false_positive, missed = noisy & ~clean, ~noisy & clean
    fitted_fp, fitted_missed = (positive & false_positive).sum(), (~positive & missed).sum()
    n_fp, n_missed = int(false_positive.sum()), int(missed.sum())

    def share(k, n):
        return float(k) / n if n else float("nan")

    return {
        "all": share(fitted_fp + fitted_missed, n_fp + n_missed),
        "false_positive": share(fitted_fp, n_fp),
        "missed": share(fitted_missed, n_missed),
        "n_wrong": n_fp + n_missed,
        "n_false_positive": n_fp,
        "n_missed": n_missed,
    }


def chance_fitted(noisy_labels, clean_labels, classes: Sequence[int] | None = None) -> float:
    """Expected share of the wrong labels fitted by scores that carry no information (a random
    ranking of the images per class): the chance level of :func:`wrong_labels_fitted`'s ``all``.

    Per class, ``k_c = sum(noisy_c)`` of the ``N`` images are called positive, so a false positive is
    called positive (fitted) with probability ``k_c / N`` and a missed positive is left negative
    (fitted) with probability ``1 - k_c / N``."""
    noisy = np.asarray(noisy_labels).astype(bool)
    clean = np.asarray(clean_labels).astype(bool)
    cols = list(range(noisy.shape[1])) if classes is None else list(classes)
    noisy, clean = noisy[:, cols], clean[:, cols]
    share_positive = noisy.sum(axis=0) / noisy.shape[0]
    n_fp, n_missed = (noisy & ~clean).sum(axis=0), (~noisy & clean).sum(axis=0)
    total = int(n_fp.sum() + n_missed.sum())
    if not total:
        return float("nan")
    return float((n_fp * share_positive + n_missed * (1 - share_positive)).sum() / total)


def reference_levels(noisy_labels, clean_labels, classes: Sequence[int] | None = None) -> dict:
    """``chance`` (:func:`chance_fitted`) and ``clean_ranking`` (the share fitted by scores that rank
    every true positive above every true negative, ties in image order) of the wrong labels."""
    clean = np.asarray(clean_labels, dtype=np.float64)
    return {
        "chance": chance_fitted(noisy_labels, clean_labels, classes),
        "clean_ranking": wrong_labels_fitted(clean, noisy_labels, clean_labels, classes)["all"],
    }
