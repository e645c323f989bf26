"""Label audit: rank every (training image, class) label by how likely it is wrong.

The NVUM memory holds, for training image ``i`` and class ``c``, an exponential moving average of
the image's logits over training with the log class prior removed (eq. 3)::

    t_ic <- beta * t_ic + (1 - beta) * (z_ic - log pi_c)

After ``K`` updates (one per epoch, with either schedule) the memory is ``(1 - beta^K)`` times an
average of the per-epoch targets (weights ``beta^(K-k)``, normalised), so the memory's view of the
image's logit for class ``c``, on the scale of the network's logits, is::

    m_ic = t_ic / (1 - beta^K) + log pi_c        (without "+ log pi_c" for a memory stored
                                                  with unbiased_memory = false)

``m`` is what the network believed about the image over the whole of training, not only at its
end. In the first epoch every image's logits are computed before the network has trained on it
(out-of-sample predictions); a wrong label that the network memorises late still shows up in ``m``
as a label it disagreed with for most of training.

Scores (higher = more likely wrong), for the given (noisy) label ``y_ic`` in {0, 1}:

``score`` (memory, the ranking of the audit)
    the belief ``b = (1 - w) * m + w * z`` (``w = model_weight``, default 0: the memory alone;
    ``z`` the final network's logits, below) is first calibrated per class: a shift ``s_c`` is
    added to every logit of class ``c`` so that the mean probability ``mean_i sigmoid(b_ic + s_c)``
    equals the class's given-positive rate (:func:`calibrate_logits`). The score is the calibrated
    belief's probability that the given label is wrong::

        score_ic = sigmoid((1 - 2 y_ic) * (b_ic + s_c))  (= 1 - P(positive) for y = 1, P(positive) for y = 0)

    Why: when labels are flipped with a rate ``r`` that depends neither on the image nor on the
    direction of the flip (symmetric noise), the posterior probability that a given label is wrong
    is an increasing function of ``(1 - 2 y) * logit P(positive | image)`` (with the probability of
    the clean or of the noisy label alike), which is what this ranks, across images and classes.
    The calibration puts every class on the scale of its own prevalence: an average over training
    lags behind the class offsets that the network learns in its first steps (rare classes start
    far too high), which would otherwise rank the classes against each other arbitrarily. Within
    a class the order of the images is the memory's.

``loss`` (reference 1)
    the per-label binary cross-entropy of the final network, ``softplus((1 - 2 y_ic) * z_ic)`` with
    ``z`` the logits of a prediction pass over the training images (eval mode, no augmentation).

``cl_margin`` (reference 2: a confident-learning style rule, written here)
    with ``p = sigmoid(z)`` the final network's probabilities, per class ``c`` the thresholds
    ``thr1_c = mean(p_ic | y_ic = 1)`` and ``thr0_c = mean(p_ic | y_ic = 0)``; a given-negative
    label is flagged when ``p_ic >= thr1_c`` (the prediction reaches the positives' typical
    probability) and a given-positive label when ``p_ic <= thr0_c``; the margin
    ``p_ic - thr1_c`` (``y = 0``) or ``thr0_c - p_ic`` (``y = 1``) ranks the labels,
    ``cl_flagged = margin >= 0``. The probabilities are in-sample (no cross-validation).

Where the data list holds the true labels (``clean_label``, as the synthetic set does), the audit
also reports, per ranking, the detection ROC AUC of the wrong labels and the precision of the top
``k`` labels (:func:`detection_metrics`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def memory_logits(values, log_prior, epochs: int, momentum: float = 0.9, unbiased: bool = True) -> np.ndarray:
    """The memory's view of every training logit, ``m = t / (1 - beta^K) + log pi`` (module docstring).

    Args:
        values: (N, C) memory ``t``.
        log_prior: (C,) ``log pi`` stored with the memory.
        epochs: K, the number of memory updates per row (completed epochs).
        momentum: beta used in training.
        unbiased: whether the memory subtracted ``log pi`` (train.json's ``unbiased_memory``).
    """
    values = np.asarray(values, dtype=np.float64)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
    filled = 1.0 - momentum ** max(int(epochs), 1)
    m = values / filled
    if unbiased:
        m = m + np.asarray(log_prior, dtype=np.float64)[None, :]
    return m


def wrong_label_sign(labels) -> np.ndarray:
    """+1 where the given label is 0, -1 where it is 1: logits times this favour 'wrong'."""
    return 1.0 - 2.0 * np.asarray(labels, dtype=np.float64)


def calibrate_logits(logits, labels, tol: float = 1e-10) -> np.ndarray:
    """Shift every class's logits so that their mean probability equals the class's given-positive rate.

    For class ``c`` the shift ``b_c`` solves ``mean_i sigmoid(l_ic + b_c) = mean_i y_ic`` (bisection;
    the mean is increasing in ``b_c``). A class whose labels are all 0 (all 1) is shifted to very
    negative (positive) logits. Only one offset per class changes: the order of the images within a
    class is kept.
    """
    z = np.asarray(logits, dtype=np.float64)
    target = np.asarray(labels, dtype=np.float64).mean(axis=0)
    lo, hi = -60.0 - z.max(axis=0), 60.0 - z.min(axis=0)  # every probability ~0 at lo, ~1 at hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        above = sigmoid(z + mid).mean(axis=0) > target
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
        if np.max(hi - lo) < tol:
            break
    return z + 0.5 * (lo + hi)


def sigmoid(x):
    """The logistic function in float64 (through ``tanh``: no overflow for large ``|x|``)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def memory_score(m, labels) -> np.ndarray:
    """``sigmoid((1 - 2y) m)``: the memory's probability that the given label is wrong."""
    return sigmoid(wrong_label_sign(labels) * np.asarray(m, dtype=np.float64))


def loss_score(logits, labels) -> np.ndarray:
    """Per-label BCE of logits against the given labels, ``softplus((1 - 2y) z)``."""
    s = wrong_label_sign(labels) * np.asarray(logits, dtype=np.float64)
    return np.logaddexp(0.0, s)


def confident_learning(probs, labels) -> dict:
    """The per-class threshold rule (module docstring).

    Returns:
        dict with ``margin`` (N, C), ``flagged`` (N, C) bool, ``thr_pos`` and ``thr_neg`` (C,):
        the mean probability of the given-positive / given-negative labels of each class (NaN
        for a class without any; no label of that class is flagged then).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    with np.errstate(invalid="ignore"):
        thr_pos = np.where(y.any(0), (p * y).sum(0) / np.maximum(y.sum(0), 1), np.nan)
        thr_neg = np.where((~y).any(0), (p * ~y).sum(0) / np.maximum((~y).sum(0), 1), np.nan)
    margin = np.where(y, thr_neg[None, :] - p, p - thr_pos[None, :])
    margin = np.where(np.isnan(margin), -np.inf, margin)
    return {"margin": margin, "flagged": margin >= 0, "thr_pos": thr_pos, "thr_neg": thr_neg}


def detection_metrics(scores, wrong, ks: Sequence[int] = (100, 1000)) -> dict:
    """How well a score ranks wrong labels above right ones.

    Args:
        scores: (M,) scores, higher = more likely wrong.
        wrong: (M,) bool, the labels that differ from the truth.
        ks: cut-offs for precision at k; precision at ``n_wrong`` (R-precision) is added.

    Returns:
        dict: ``auroc``, ``precision@k`` for each k, ``precision@n_wrong``, ``n_wrong``, ``n``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    finite = s[np.isfinite(s)]
    low, high = (finite.min() - 1, finite.max() + 1) if finite.size else (-1.0, 1.0)
    s = np.where(s == -np.inf, low,
                 np.where(s == np.inf, high, s))  # the same order (e.g. -inf: never flagged), finite for AUROC
    w = np.asarray(wrong, dtype=bool).ravel()
    out = {"n": int(w.size), "n_wrong": int(w.sum())}
    out["auroc"] = float(roc_auc_score(w, s)) if 0 < w.sum() < w.size else float("nan")
    order = np.argsort(-s, kind="stable")
    for k in list(ks) + [int(w.sum())]:
        k = min(int(k), w.size)
        key = "precision@n_wrong" if k == w.sum() and k not in ks else f"precision@{k}"
        out[key] = float(w[order[:k]].mean()) if k > 0 else float("nan")
    return out
