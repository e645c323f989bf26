"""Operating points and calibration of a test table: thresholds stored in the run record, sensitivity and
specificity at them, expected calibration error."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..labels import disease_indices
from .metrics import expected_calibration_error, sensitivity_specificity


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The probabilities of logits, in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


#: how the stored thresholds were chosen (written beside them in the run record).
THRESHOLD_RULE = ("per class, the point of the validation ROC curve closest to (0, 1) (sklearn roc_curve); positive "
                  "when probability >= threshold; 0.5 for a class with a single label value in validation")


def operating_table(table: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                    thresholds: Mapping[str, float] | None, num_bins: int = 10) -> pd.DataFrame:
    """An AUC table (:func:`auc_table`) with the operating point and the calibration added.

    Adds ``ece`` (expected calibration error of the probabilities, ``num_bins`` equal-width bins)
    and, with ``thresholds``, ``threshold``, ``sensitivity`` and ``specificity`` (a case is
    positive when its probability is ``>= threshold``; a class without a threshold gets NaN). The
    ``Mean (diseases)`` row holds their mean over the diseases where the value is defined.
    """
    table = table.copy()
    n = len(classes)
    diseases = disease_indices(classes)
    columns = {}
    if thresholds is not None:
        cut = np.array([thresholds.get(c, np.nan) for c in classes], dtype=np.float64)
        if len(labels):
            sens, spec = sensitivity_specificity(probs, labels, np.nan_to_num(cut, nan=np.inf))
            sens[np.isnan(cut)], spec[np.isnan(cut)] = np.nan, np.nan
        else:
            sens = spec = np.full(n, np.nan)
        columns.update(threshold=cut, sensitivity=sens, specificity=spec)
    columns["ece"] = expected_calibration_error(probs, labels, num_bins) if len(labels) else np.full(n, np.nan)
    for name, values in columns.items():
        picked = values[diseases] if diseases else values[:0]
        picked = picked[~np.isnan(picked)]
        table[name] = list(values) + [float(picked.mean()) if picked.size else np.nan]
    return table
