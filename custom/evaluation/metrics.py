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
