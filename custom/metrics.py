"""Per-class ROC AUC for multi-label outputs, safe for rare classes."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from ignite.metrics import EpochMetric
from sklearn.metrics import roc_auc_score

from .labels import disease_indices


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
        from .distributed import all_gather_rows, is_distributed

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
