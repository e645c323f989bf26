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
At random (an untrained network), about ``pi_c`` of a class's false positives and ``1 - pi_c`` of
its missed positives count as fitted.

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
