"""Operating points and calibration of a test table: thresholds stored in the run record, sensitivity and
specificity at them, expected calibration error."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..labels import disease_indices
from .metrics import expected_calibration_error, sensitivity_specificity


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The probabilities of logits, in float64 (``exp(-softplus(-z))``: no overflow for very negative logits)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))


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


#: what a person reads where decisions need thresholds and there are none: how to get them.
HOW_TO_GET_THRESHOLDS = ("choose them on the validation split with `python -m monai.bundle run choose_thresholds "
                         "--config_file bundle/configs/train.json` and the training's --bundle_root and data list "
                         "settings, or give them (inference.json's --thresholds)")


def threshold_notes_line(notes: Mapping[str, str] | None) -> str | None:
    """One line naming the classes whose threshold is a default (no validation positive or negative), or ``None``."""
    if not notes:
        return None
    return ("operating thresholds that are a default, not chosen on data: "
            + "; ".join(f"{cls} ({note})" for cls, note in notes.items()))


class OperatingThresholds:
    """The step after training that chooses, on the validation split, what the deployed model needs, whether or not
    the test report runs, so that inference, the zip and the served model always have them:

    - the operating thresholds, stored in the run record beside the best model (``model.json``: ``thresholds``,
      ``threshold_rule``, ``threshold_notes``, ``threshold_split``;
      :func:`~custom.evaluation.metrics.operating_thresholds`: the ROC point closest to (0, 1));
    - the out-of-distribution gate (:func:`custom.evaluation.ood.fit_on_images`: fitted on the training split,
      its threshold accepting ``ood_share`` of the validation split), written beside the best model
      (``model.ood.npz``); the validation images' features come from the pass that gives the thresholds.

    Args:
        network: the evaluation network (the best model's weights are loaded into it).
        datalist: the training :class:`~custom.data.DataList` (its ``validation`` split is used).
        transform: the deterministic preprocessing.
        checkpoint: the best model file, or the run's model folder (its ``model.pt``).
        device, batch_size, num_workers, amp: inference settings.
        ood_gate: fit the gate (default ``True``); ood_share: the share of validation images it accepts.
    """

    def __init__(self, network, datalist, transform, checkpoint, device="cpu", batch_size: int = 256,
                 num_workers: int = 0, amp=False, ood_gate=True, ood_share: float = 0.99):
        from pathlib import Path

        from ..flags import as_bool, resolve_auto

        self.ood_gate, self.ood_share = as_bool(ood_gate, "ood_gate"), float(ood_share)

        checkpoint = Path(checkpoint)  # the model folder (made by training) or a weights file
        self.checkpoint = checkpoint if checkpoint.suffix in (".pt", ".pth") else checkpoint / "model.pt"
        self.network, self.datalist, self.transform = network, datalist, transform
        self.device, self.batch_size, self.num_workers = device, int(batch_size), int(num_workers)
        self.amp = resolve_auto(amp, device, "amp")
        self.thresholds: dict[str, float] | None = None
        self.threshold_notes: dict[str, str] = {}
        self.written: list[tuple[str, object]] = []  # for custom.RunSummary

    def run(self) -> dict[str, float] | None:
        from ..networks import load_weights
        from ..record import record_path, update_record
        from .metrics import operating_thresholds
        from .ood import no_gate_reason, predict_features
        from .predict import predict

        record = record_path(self.checkpoint)
        items = self.datalist.items("validation") if "validation" in self.datalist.splits else []
        if not items or not self.checkpoint.is_file():
            why = "no validation split" if not items else f"no best model {self.checkpoint}"
            print(f"operating thresholds not chosen ({why}): inference and the served model will give no "
                  f"decisions; to get them, {HOW_TO_GET_THRESHOLDS}", flush=True)
            return None
        load_weights(self.network, self.checkpoint)
        no_gate = no_gate_reason(self.network) if self.ood_gate else None
        gated = self.ood_gate and no_gate is None
        if gated:
            logits, features = predict_features(self.network, items, self.transform, self.device, self.batch_size,
                                                self.num_workers, desc="validation (thresholds)", amp=self.amp)
        else:
            logits = predict(self.network, items, self.transform, self.device, self.batch_size, self.num_workers,
                             desc="validation (thresholds)", amp=self.amp)
        self.thresholds, self.threshold_notes = operating_thresholds(sigmoid(logits),
                                                                     self.datalist.labels("validation"),
                                                                     self.datalist.classes)
        update_record(self.checkpoint, thresholds=dict(self.thresholds), threshold_rule=THRESHOLD_RULE,
                      threshold_notes=dict(self.threshold_notes), threshold_split="validation")
        print(f"operating thresholds (ROC point closest to (0, 1) on the {len(items)} validation images) written "
              f"to {record}", flush=True)
        line = threshold_notes_line(self.threshold_notes)
        if line:
            print(line, flush=True)
        self.written.append(("operating thresholds (validation)", str(record.resolve())))
        if gated:
            self._fit_gate(features)
        elif no_gate:
            print(no_gate, flush=True)
        return self.thresholds

    def _fit_gate(self, validation_features) -> None:
        from .ood import fit_and_save_gate

        _, path = fit_and_save_gate(self.network, self.datalist.items("training"), [], self.transform, self.checkpoint,
                                    self.ood_share, threshold_features=validation_features, device=self.device,
                                    batch_size=self.batch_size, num_workers=self.num_workers, amp=self.amp)
        self.written.append(("out-of-distribution gate", str(path.resolve())))


def threshold_lines(thresholds, setting=None, checkpoint=None, notes=None, what: str = "decisions.csv") -> list[str]:
    """What inference, export and the served model print about their operating thresholds: without any (and not
    turned off with an empty dict), that ``what`` needs them and how to get them; with some, the classes whose
    threshold is a default (``notes``, else the ``threshold_notes`` of the run record beside ``checkpoint``)."""
    from ..record import read_record, record_path

    if isinstance(setting, Mapping) and not setting:
        return []  # turned off on purpose
    record = record_path(checkpoint) if setting is None and checkpoint not in (None, "") else None
    if not thresholds:
        where = record if record is not None else "the settings"
        return [f"no {what}: decisions need operating thresholds and {where} holds none (a model trained before "
                f"they were stored, or without a validation split); to get them, {HOW_TO_GET_THRESHOLDS}"]
    if notes is None and record is not None and record.is_file():
        notes = (read_record(record) or {}).get("threshold_notes")
    line = threshold_notes_line(notes)
    return [line] if line else []
