"""Per-class ROC AUC for multi-label outputs, safe for rare classes."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import roc_auc_score

from ..labels import disease_indices


def per_class_auc(scores, labels) -> np.ndarray:
    """ROC AUC of every class.

    Args:
        scores: (N, C) logits or probabilities.
        labels: (N, C) 0/1 labels.

    Returns:
        (C,) float64 array; NaN for a class whose labels hold a single value (AUC undefined).
    """
    scores = np.asarray(torch.as_tensor(scores, dtype=torch.float64).cpu())
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if 0 < labels[:, c].sum() < labels.shape[0]:
            out[c] = roc_auc_score(labels[:, c], scores[:, c])
    return out


def mean_auc(aucs, indices: Sequence[int]) -> float:
    """Mean of the defined AUCs among ``indices``; 0.5 (chance) with a warning when none is defined."""
    values = np.asarray(aucs, dtype=np.float64)[list(indices)]
    values = values[~np.isnan(values)]
    if values.size == 0:
        warnings.warn("no class has both positive and negative labels: mean AUC set to 0.5", stacklevel=2)
        return 0.5
    return float(values.mean())


class MultiLabelAUC(EpochMetric):
    """Mean ROC AUC over the disease classes (``No Finding`` excluded, as in the paper).

    Classes with a single label value in the evaluated set are left out of the mean instead of
    turning it into NaN. Besides the mean (stored under the metric's name), the per-class AUCs
    are put into ``engine.state.metrics`` as ``"<name>/<class>"`` so that trackers log them.

    Args:
        classes: ordered class names.
        output_transform: maps the engine output to ``(logits, labels)``, both (B, C).
    """

    def __init__(self, classes: Sequence[str], output_transform=lambda x: (x["pred"], x["label"]), device="cpu"):
        self.classes = list(classes)
        self.diseases = disease_indices(self.classes)
        self.per_class: dict[str, float] = {}
        super().__init__(self._compute, output_transform=output_transform, check_compute_fn=False, device=device)

    def _compute(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        aucs = per_class_auc(scores, labels)
        self.per_class = dict(zip(self.classes, aucs.tolist()))
        return mean_auc(aucs, self.diseases)

    def compute(self) -> float:
        """The mean AUC over all ranks' predictions. Unlike ``EpochMetric``, which gathers only
        equal-sized shards, it accepts the uneven shards of an unpadded distributed sampler (so no
        image is counted twice), and computes on every rank."""
        from ..nvum.gather import all_gather_rows
        from ..training.distributed import is_distributed

        if not is_distributed() or not self._predictions:
            return super().compute()
        scores = all_gather_rows(torch.cat(self._predictions, dim=0))
        labels = all_gather_rows(torch.cat(self._targets, dim=0))
        return self._compute(scores, labels)

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        for cls, value in self.per_class.items():
            if not np.isnan(value):
                engine.state.metrics[f"{name}/{cls}"] = value


def bootstrap_indices(num_samples: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Indices of ``num_resamples`` bootstrap resamples of ``num_samples`` items.

    Returns:
        (num_resamples, num_samples) int64 array; row ``b`` draws ``num_samples`` items with
        replacement (``numpy.random.default_rng(seed)``).
    """
    if num_samples < 1 or num_resamples < 1:
        raise ValueError(
            f"bootstrap needs at least one item and one resample, got {num_samples} items, {num_resamples} resamples"
        )
    return np.random.default_rng(seed).integers(0, num_samples, size=(num_resamples, num_samples))


def weighted_auc(scores, labels, weights) -> np.ndarray:
    """ROC AUC of every class under many weightings of the items at once (rank statistic).

    The AUC of class ``c`` under weights ``w`` is the Mann-Whitney statistic
    ``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)``; integer weights
    (how often each item is drawn) make it the AUC of a bootstrap resample, exactly what
    ``sklearn.metrics.roc_auc_score`` gives on the resampled items (ties count one half).
    Computed by sorting each class's scores once, grouping equal scores, and accumulating the
    negatives' weight below each group: O(R N) per class for R weightings of N items.

    Args:
        scores: (N, C) scores (logits or probabilities).
        labels: (N, C) 0/1 labels.
        weights: (R, N) non-negative item weights, e.g. bootstrap counts.

    Returns:
        (R, C) float64 array; NaN where a class has no positive or no negative weight.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    weights = np.asarray(weights)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    if weights.ndim != 2 or weights.shape[1] != scores.shape[0]:
        raise ValueError(f"weights {weights.shape} must be (resamples, {scores.shape[0]})")
    integer = np.issubdtype(weights.dtype, np.integer)
    weights = weights.astype(
        np.int64 if integer and weights.max(initial=0) > 2**15 else np.int32 if integer else np.float64
    )
    out = np.full((weights.shape[0], scores.shape[1]), np.nan)
    for c in range(scores.shape[1]):
        order = np.argsort(scores[:, c], kind="stable")
        s, y = scores[order, c], labels[order, c]
        w = weights[:, order]
        pos, neg = w * y, w * ~y  # (R, N) weight of each item as a positive / as a negative
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first item of each group of equal scores
        if len(starts) < len(s):  # ties: one column per group of equal scores
            pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
        neg_below = np.cumsum(neg, axis=1, dtype=np.int64 if integer else np.float64) - neg
        total_pos, total_neg = pos.sum(axis=1, dtype=np.float64), neg.sum(axis=1, dtype=np.float64)
        twice = (pos * (2 * neg_below + neg)).sum(axis=1, dtype=np.int64 if integer else np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = twice / (2.0 * total_pos * total_neg)
        auc[(total_pos == 0) | (total_neg == 0)] = np.nan
        out[:, c] = auc
    return out


def bootstrap_auc(
    scores,
    labels,
    mean_over: Sequence[int] | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    indices=None,
) -> dict:
    """Per-class AUC with percentile bootstrap confidence intervals, and the same for a mean.

    The items (images) are resampled with replacement, the same resample for every class, so
    the interval of the mean accounts for the correlation between classes.

    Args:
        scores, labels: (N, C) arrays.
        mean_over: class indices averaged in ``mean`` (default: all); the mean of a resample is
            taken over those of them whose AUC is defined in it.
        num_resamples, seed: the resamples (:func:`bootstrap_indices`).
        confidence: two-sided level of the percentile intervals.
        indices: explicit (R, N) resample indices instead of ``num_resamples`` and ``seed``.

    Returns:
        dict with ``auc``, ``low``, ``high`` ((C,) arrays: AUC on all items and the interval;
        NaN for a class whose labels hold a single value), ``mean``, ``mean_low``,
        ``mean_high`` (floats), ``resampled`` ((R, C) AUC per resample) and
        ``resampled_mean`` ((R,)).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = scores.shape[0]
    if indices is None:
        indices = bootstrap_indices(n, num_resamples, seed)
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.size == 0 or indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"resample indices must be a (resamples, items) array of values in [0, {n})")
    rows = indices.shape[0]
    counts = np.bincount((indices + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
    full = weighted_auc(scores, labels, np.ones((1, n), dtype=np.int32))[0]
    resampled = weighted_auc(scores, labels, counts)
    resampled[:, np.isnan(full)] = np.nan
    mean_over = list(range(scores.shape[1])) if mean_over is None else list(mean_over)
    defined = [c for c in mean_over if not np.isnan(full[c])]
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (undefined classes)
        low, high = np.nanquantile(resampled, [alpha, 1.0 - alpha], axis=0)
        resampled_mean = np.nanmean(resampled[:, defined], axis=1) if defined else np.full(len(resampled), np.nan)
        mean_low, mean_high = np.nanquantile(resampled_mean, [alpha, 1.0 - alpha]) if defined else (np.nan, np.nan)
    return {
        "auc": full,
        "low": low,
        "high": high,
        "mean": float(np.mean(full[defined])) if defined else float("nan"),
        "mean_low": float(mean_low),
        "mean_high": float(mean_high),
        "resampled": resampled,
        "resampled_mean": resampled_mean,
    }


#: threshold of a class whose validation labels hold a single value (no ROC curve to choose on).
DEFAULT_THRESHOLD = 0.5


def operating_thresholds(probs, labels, classes: Sequence[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Per-class operating thresholds: the point of the ROC curve closest to ``(0, 1)``.

    For each class, ``sklearn.metrics.roc_curve`` gives the candidate thresholds; the one whose
    ``(false positive rate, true positive rate)`` lies nearest (Euclidean) to the corner
    ``(0, 1)`` is chosen, i.e. the one minimising ``(1 - sensitivity)^2 + (1 - specificity)^2``
    (ties: the first, i.e. the highest threshold). A case is called positive when its probability
    is ``>= threshold``. sklearn's first threshold (``inf``, nothing called positive) is never the
    closest point when the class has positives, except in degenerate cases, where it is replaced by
    the largest finite one.

    Args:
        probs: (N, C) probabilities.
        labels: (N, C) 0/1 labels.
        classes: the C class names.

    Returns:
        ``(thresholds, notes)``: ``{class: threshold}`` for every class, and ``{class: note}`` for
        the classes whose labels hold a single value: they get :data:`DEFAULT_THRESHOLD` (0.5).
    """
    from sklearn.metrics import roc_curve

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.shape != labels.shape or probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be (N, {len(classes)})")
    thresholds, notes = {}, {}
    for c, name in enumerate(classes):
        column = labels[:, c]
        if not 0 < column.sum() < len(column):
            thresholds[str(name)] = DEFAULT_THRESHOLD
            value = "no images" if len(column) == 0 else f"only label {int(column[0])}"
            notes[str(name)] = f"{value} in the validation split: no ROC curve, threshold {DEFAULT_THRESHOLD}"
            continue
        fpr, tpr, cut = roc_curve(column, probs[:, c])
        best = int(np.argmin(fpr**2 + (1.0 - tpr) ** 2))
        value = cut[best]
        if not np.isfinite(value):
            value = cut[1] if len(cut) > 1 else DEFAULT_THRESHOLD
        thresholds[str(name)] = float(value)
    return thresholds, notes


def sensitivity_specificity(probs, labels, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity (true positive rate) and specificity (true negative rate) of every class when a
    case is called positive at ``probability >= threshold``.

    Args:
        probs, labels: (N, C) arrays.
        thresholds: (C,) thresholds.

    Returns:
        ``(sensitivity, specificity)``, (C,) float64 arrays; NaN where a class has no positive
        (sensitivity) or no negative (specificity).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if probs.shape != labels.shape or probs.ndim != 2 or thresholds.shape != (probs.shape[1],):
        raise ValueError(f"probs {probs.shape}, labels {labels.shape} must be (N, C) and thresholds "
                         f"{thresholds.shape} (C,)")
    called = probs >= thresholds[None, :]
    pos, neg = labels.sum(axis=0), (~labels).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(pos > 0, (called & labels).sum(axis=0) / pos, np.nan)
        specificity = np.where(neg > 0, (~called & ~labels).sum(axis=0) / neg, np.nan)
    return sensitivity.astype(np.float64), specificity.astype(np.float64)


def calibration_bins(probs, labels, num_bins: int = 10) -> dict:
    """Reliability statistics of one class's probabilities in ``num_bins`` equal-width bins of [0, 1].

    Bin ``b`` holds the probabilities in ``[b / num_bins, (b + 1) / num_bins)`` (the last bin
    includes 1).

    Returns:
        dict of (num_bins,) arrays: ``count``, ``confidence`` (mean probability; NaN in empty
        bins) and ``frequency`` (fraction of positives; NaN in empty bins).
    """
    probs = np.asarray(probs, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must have the same length")
    index = np.clip((probs * num_bins).astype(np.int64), 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, probs, minlength=num_bins) / count
        frequency = np.bincount(index, labels, minlength=num_bins) / count
    return {"count": count, "confidence": confidence, "frequency": frequency}


def expected_calibration_error(probs, labels, num_bins: int = 10) -> np.ndarray:
    """Expected calibration error of every class: ``sum_b (n_b / N) |mean probability_b - positive fraction_b|``
    over ``num_bins`` equal-width bins of [0, 1] (:func:`calibration_bins`).

    Args:
        probs, labels: (N, C) probabilities and 0/1 labels.

    Returns:
        (C,) float64 array; NaN when there are no images.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be (N, C)")
    out = np.full(probs.shape[1], np.nan)
    if probs.shape[0] == 0:
        return out
    for c in range(probs.shape[1]):
        bins = calibration_bins(probs[:, c], labels[:, c], num_bins)
        filled = bins["count"] > 0
        gap = np.abs(bins["confidence"][filled] - bins["frequency"][filled])
        out[c] = float((bins["count"][filled] * gap).sum() / probs.shape[0])
    return out
