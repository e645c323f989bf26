"""Test-set evaluation: per-class AUC with bootstrap confidence intervals, the operating point and calibration
(:mod:`.operating`), ROC and reliability figures (:mod:`.figures`), on one or more test sets, printed, saved and
tracked."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.datalist import DataList
from ..labels import disease_indices
from ..flags import as_bool, resolve_auto
from ..networks import load_weights
from ..record import read_record, record_path, update_record
from .figures import reliability_figure, roc_figure
from .metrics import bootstrap_auc, mean_auc, operating_thresholds, per_class_auc
from .operating import THRESHOLD_RULE, operating_table, sigmoid
from .predict import predict
from .tables import auc_markdown_report, format_value, interval_text, shown_auc_table
from .test_sets import TestSet, class_columns, resolve_test_sets


def auc_table(aucs: np.ndarray, labels: np.ndarray, classes: Sequence[str], low=None, high=None,
              mean=None) -> pd.DataFrame:
    """Per-class AUC table: one row per class, then ``Mean (diseases)``.

    Columns: ``class``, ``positives``, ``auc`` and, when ``low``/``high`` are given, ``ci_low`` and
    ``ci_high`` (the bootstrap interval), and ``in_mean`` (whether the class enters the mean: the
    diseases whose AUC is defined; No Finding never does, as in the paper).

    Args:
        aucs: (C,) per-class AUC (NaN where undefined).
        labels: (N, C) labels the AUCs were computed on.
        classes: class names.
        low, high: (C,) interval bounds, optional.
        mean: ``(mean, low, high)`` of the mean over diseases; default: the mean of ``aucs``
            over the defined diseases, without an interval.
    """
    diseases = disease_indices(classes)
    rows = []
    for i, c in enumerate(classes):
        row = {"class": c, "positives": int(labels[:, i].sum()), "auc": aucs[i]}
        if low is not None:
            row.update(ci_low=low[i], ci_high=high[i])
        row["in_mean"] = bool(i in diseases and not np.isnan(aucs[i]))
        rows.append(row)
    mean = mean if mean is not None else (mean_auc(aucs, diseases), np.nan, np.nan)
    row = {"class": MEAN_ROW, "positives": int(labels[:, diseases].any(axis=1).sum()), "auc": mean[0]}
    if low is not None:
        row.update(ci_low=mean[1], ci_high=mean[2])
    row["in_mean"] = False
    rows.append(row)
    return pd.DataFrame(rows)


#: name of the last row of an AUC table.
MEAN_ROW = "Mean (diseases)"


class TestReport:
    """Evaluates a checkpoint on one or more test sets, with bootstrap confidence intervals.

    For each test set it prints a per-class AUC table with bootstrap 95% intervals and the mean
    over the diseases (No Finding listed apart: it is not in the mean, as in the paper), and
    writes ``<output_dir>/test_<name>.csv`` and ``.md``, a ROC figure ``test_<name>_roc.png`` and a
    reliability figure ``test_<name>_reliability.png``. With a tracker, the files and the mean AUC
    (with its interval) are logged to its MLflow run.

    Operating thresholds: before the test sets, the network's probabilities on the validation split
    of ``datalist`` give every class a threshold (:func:`~custom.evaluation.metrics.operating_thresholds`:
    the ROC point closest to ``(0, 1)``), stored as ``thresholds`` in the run record beside the
    checkpoint (``model.json``), from where inference and the deployable bundle read them. The
    test tables then add, per class, ``threshold``, ``sensitivity`` and ``specificity`` at it, and
    the expected calibration error ``ece`` (10 equal-width bins) of the probabilities; the
    ``Mean (diseases)`` row holds their mean over the diseases whose value is defined.

    Args:
        network: the network to evaluate (weights are loaded into it from ``checkpoint``).
        datalist: the training :class:`~custom.data.DataList` (its classes are the network's
            outputs; its test splits are the default test sets).
        transform: the (deterministic) preprocessing of images.
        output_dir: where the tables and figures are written.
        checkpoint: weights file to load first (``None`` evaluates the network as it is).
        splits: test splits of ``datalist`` to evaluate, when ``test_lists`` is not given.
        test_lists: other test sets (see :func:`resolve_test_sets`); their classes are matched to
            the network's outputs by name, so a list may hold a subset of the classes.
        num_resamples: bootstrap resamples of the images (0: no intervals).
        seed: seed of the resamples.
        confidence: level of the intervals.
        device, batch_size, num_workers, amp: inference settings.
        tracker: optional :class:`~custom.training.MLflowTracker`.
        end_run: end the tracker's run afterwards (false when a later step logs to the same run).
        thresholds: ``"validation"`` (default): chosen on the validation split and written into the
            run record beside ``checkpoint`` (when there is one); ``"record"``: those of that run
            record, else chosen on the validation split without writing; a dict ``class -> threshold``;
            ``None``: no thresholds (the tables keep only ``ece`` besides the AUCs).
        ood_gate: fit the out-of-distribution gate (:mod:`custom.evaluation.ood`) and report it: with
            ``thresholds="validation"`` it is fitted on the training images, its threshold set on the validation
            images, and written beside ``checkpoint`` (``model.ood.npz``); otherwise the stored one is used, else
            one is fitted without writing. The report then adds ``ood.csv``/``ood.md`` (:meth:`ood_report`).
        ood_share: the share of the validation images the gate accepts.
    """

    __test__ = False  # not a pytest class

    def __init__(self, network, datalist: DataList, transform, output_dir, checkpoint=None, splits=None,
                 test_lists=None, num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95, device="cpu",
                 batch_size: int = 256, num_workers: int = 0, amp: bool = False, tracker=None, end_run: bool = True,
                 thresholds="validation", ood_gate=True, ood_share: float = 0.99):
        self.network, self.datalist, self.transform = network, datalist, transform
        if checkpoint not in (None, "") and Path(checkpoint).is_dir():  # a run's folder: its best model
            checkpoint = Path(checkpoint) / "model.pt"
        self.output_dir, self.checkpoint = Path(output_dir), checkpoint
        self.splits, self.test_lists = list(splits) if splits else None, test_lists
        self.num_resamples, self.seed, self.confidence = int(num_resamples), int(seed), float(confidence)
        self.device, self.batch_size, self.num_workers = device, batch_size, num_workers
        self.amp = resolve_auto(amp, device, "amp")
        self.tracker, self.end_run = tracker, as_bool(end_run, "end_run")
        if not (thresholds is None or isinstance(thresholds, Mapping) or thresholds in ("validation", "record")):
            raise ValueError(f"thresholds must be 'validation', 'record', a dict class -> threshold or null, got "
                             f"{thresholds!r}")
        self.threshold_source = thresholds
        self.ood_enabled, self.ood_share = as_bool(ood_gate, "ood_gate"), float(ood_share)
        self.ood = None  # the fitted custom.evaluation.ood.FeatureDistance, after run()
        self.ood_results = None  # the out-of-distribution table, after run()
        self.thresholds: dict[str, float] | None = None  # class -> operating threshold, after run()
        self.threshold_notes: dict[str, str] = {}
        self.threshold_split: str | None = "validation"  # the split of `datalist` the thresholds were chosen on
        self.results: dict[str, pd.DataFrame] = {}
        self.written: list[tuple[str, Path]] = []  # (what, path) of every file written, for custom.RunSummary

    def test_sets(self) -> list[TestSet]:
        if self.test_lists:
            return resolve_test_sets(self.test_lists, self.datalist)
        splits = self.splits or self.datalist.test_splits
        if not splits:
            raise ValueError(f"data list {self.datalist.path} has no test split to evaluate: add test splits to it, "
                             "name test sets with --test_lists, or train only with --test_and_deploy false")
        return [TestSet(split, self.datalist, split) for split in splits]

    def check(self) -> None:
        """Before training (:class:`custom.NVUMTrainer`): there are test sets, and the output folder is writable."""
        from ..files import check_writable

        self.test_sets()
        check_writable(self.output_dir, "evaluation output folder (output_dir)")

    def run(self) -> dict[str, pd.DataFrame]:
        test_sets = self.test_sets()
        if self.checkpoint:
            load_weights(self.network, self.checkpoint)
            print(f"evaluating checkpoint {_describe_checkpoint(self.checkpoint)}", flush=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        all_columns = [class_columns(test.datalist.classes, self.datalist.classes, f"data list {test.datalist.path}")
                       for test in test_sets]  # every test set's classes checked before any prediction
        self.thresholds = self._operating_thresholds()
        self.ood = self._ood_gate() if self.ood_enabled else None
        distances = {}
        for test, columns in zip(test_sets, all_columns):
            labels = test.datalist.labels(test.split)
            logits, distances[test.name] = self._predict(test.datalist.items(test.split), f"test {test.name}")
            logits = logits[:, columns] if len(logits) else np.zeros(labels.shape, np.float32)
            table = self.table(logits, labels, test.datalist.classes)
            table = operating_table(table, sigmoid(logits), labels, test.datalist.classes, self.thresholds)
            self.results[test.name] = table
            self._report(test, table, logits, labels)
        if self.ood is not None:
            self.ood_report(distances, [i["image"] for i in test_sets[0].datalist.items(test_sets[0].split)])
        if self.tracker is not None and self.end_run:
            self.tracker.finish()
        return self.results

    def _predict(self, items, desc):
        """Logits of ``items``, and their gate distances when there is a gate (else ``None``)."""
        if self.ood is None:
            return predict(self.network, items, self.transform, self.device, self.batch_size, self.num_workers,
                           desc=desc, amp=self.amp), None
        from .ood import predict_features

        logits, features = predict_features(self.network, items, self.transform, self.device, self.batch_size,
                                            self.num_workers, desc=desc, amp=self.amp)
        return logits, self.ood.distance(features) if len(features) else np.zeros(0)

    def _ood_gate(self):
        """The out-of-distribution gate: fitted (training features, threshold on validation) and written beside the
        checkpoint with ``thresholds="validation"``; otherwise the stored one (written after training by
        :class:`~custom.evaluation.operating.OperatingThresholds`), else fitted without writing."""
        from .ood import fit_and_save_gate, fit_on_images, load_gate, no_gate_reason, ood_path

        no_gate = no_gate_reason(self.network)
        if no_gate:
            print(no_gate, flush=True)
            return None
        if self.threshold_source != "validation" and self.checkpoint not in (None, ""):
            stored = load_gate(self.checkpoint)
            if stored is not None:
                print(f"out-of-distribution gate from {ood_path(self.checkpoint)}", flush=True)
                return stored
        splits = self.datalist.splits
        if not ("training" in splits and "validation" in splits and self.datalist.items("validation")):
            print("no training or validation split: no out-of-distribution gate", flush=True)
            return None
        fit = dict(device=self.device, batch_size=self.batch_size, num_workers=self.num_workers, amp=self.amp)
        items = self.datalist.items("training"), self.datalist.items("validation")
        if self.threshold_source == "validation" and self.checkpoint not in (None, ""):
            return fit_and_save_gate(self.network, *items, self.transform, self.checkpoint, self.ood_share, **fit)[0]
        return fit_on_images(self.network, *items, self.transform, self.ood_share, **fit)

    def ood_report(self, test_distances: dict, test_images) -> pd.DataFrame:
        """The out-of-distribution table (:func:`custom.evaluation.ood_sets.ood_table`): printed, written as
        ``ood.csv`` and ``ood.md``, and tracked (``ood_<set>_accepted``, ``ood_<set>_auroc``)."""
        import tempfile

        from .ood_sets import ood_markdown, ood_sets, ood_table

        with tempfile.TemporaryDirectory(prefix="nvum-ood-") as tmp:
            sets = ood_sets(tmp, test_images)
            ood = {name: self._predict([{"image": str(p)} for p in files], f"out-of-distribution {name}")[1]
                   for name, files in sets.items()}
        table = ood_table({k: v for k, v in test_distances.items() if v is not None}, ood, self.ood.threshold)
        self.ood_results = table
        shown = table.assign(accepted=table["accepted"].map(lambda v: f"{v:.1%}"),
                             auroc=table["auroc"].map(format_value))
        title = (f"Out-of-distribution gate: distance threshold {self.ood.threshold:.2f} (accepts "
                 f"{self.ood.share:.0%} of the {self.ood.num_threshold} validation images; fitted on "
                 f"{self.ood.num_fit} training images, half of them jittered); AUROC against all the test images")
        print(f"\n{title}\n{shown.to_string(index=False)}\n", flush=True)
        csv, md = self.output_dir / "ood.csv", self.output_dir / "ood.md"
        table.to_csv(csv, index=False)
        md.write_text(f"# {title}\n\n{ood_markdown(table)}\n")
        self.written += [("out-of-distribution table", csv), ("out-of-distribution table (Markdown)", md)]
        if self.tracker is not None:
            values = {f"ood_{row.set}_{key}": float(getattr(row, key)) for row in table.itertuples()
                      for key in ("accepted", "auroc")}
            self.tracker.log_values({k: v for k, v in values.items() if not np.isnan(v)})
            for path in (csv, md):
                self.tracker.log_file(path, "test")
        return table

    def _record_file(self) -> Path | None:
        return record_path(self.checkpoint) if self.checkpoint not in (None, "") else None

    def _operating_thresholds(self) -> dict[str, float] | None:
        """The thresholds of :attr:`threshold_source` (class -> threshold), chosen and stored when asked."""
        source, record = self.threshold_source, self._record_file()
        if source is None:
            return None
        if isinstance(source, Mapping):
            self.threshold_split = None  # given, not chosen on a split
            return {str(k): float(v) for k, v in source.items()}
        if source == "record" and record is not None and record.is_file():
            content = read_record(record) or {}
            stored = content.get("thresholds")
            if stored:
                print(f"operating thresholds from {record}", flush=True)
                self.threshold_notes = dict(content.get("threshold_notes") or {})
                self.threshold_split = str(content.get("threshold_split") or "validation")
                _print_notes(self.threshold_notes)
                return {str(k): float(v) for k, v in stored.items()}
        items = self.datalist.items("validation") if "validation" in self.datalist.splits else []
        if not items:
            print("no validation split: no operating thresholds", flush=True)
            return None
        labels = self.datalist.labels("validation")
        logits = predict(self.network, items, self.transform, self.device, self.batch_size, self.num_workers,
                         desc="validation (thresholds)", amp=self.amp)
        thresholds, self.threshold_notes = operating_thresholds(sigmoid(logits), labels, self.datalist.classes)
        self.threshold_split = "validation"
        _print_notes(self.threshold_notes)
        if source == "validation" and record is not None:
            if record.is_file():
                update_record(record, thresholds={str(k): float(v) for k, v in thresholds.items()},
                              threshold_rule=THRESHOLD_RULE, threshold_notes=dict(self.threshold_notes or {}),
                              threshold_split="validation")
                print(f"operating thresholds (ROC point closest to (0, 1) on the {len(items)} validation images) "
                      f"written to {record}", flush=True)
            else:
                print(f"no run record {record}: the operating thresholds are not stored", flush=True)
        return thresholds

    def table(self, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
        """Per-class AUC table of one test set, with intervals when ``num_resamples`` > 0."""
        if self.num_resamples <= 0 or len(labels) == 0:
            return auc_table(per_class_auc(scores, labels) if len(labels) else np.full(len(classes), np.nan), labels,
                             classes)
        boot = bootstrap_auc(scores, labels, disease_indices(classes), self.num_resamples, self.seed, self.confidence)
        return auc_table(boot["auc"], labels, classes, boot["low"], boot["high"],
                         (boot["mean"], boot["mean_low"], boot["mean_high"]))

    def _report(self, test: TestSet, table: pd.DataFrame, scores: np.ndarray, labels: np.ndarray) -> None:
        source = test.split if test.datalist is self.datalist else f"{test.datalist.path.name}, split '{test.split}'"
        level = "no CI"
        if "ci_low" in table:
            level = f"{self.confidence:.0%} bootstrap CI, {self.num_resamples} resamples, seed {self.seed}"
        title = f"Test AUC on '{test.name}' ({source}; {len(labels)} images; {level})"
        if "threshold" in table:
            same_list = test.datalist is self.datalist or _same_file(test.datalist.path, self.datalist.path)
            title += "; " + _threshold_origin(self.threshold_split, test.split if same_list else None)
        shown = shown_auc_table(table)
        print(f"\n{title}\n{shown.to_string(index=False)}\n", flush=True)
        stem = self.output_dir / f"test_{test.name}"
        csv, md, png = Path(f"{stem}.csv"), Path(f"{stem}.md"), Path(f"{stem}_roc.png")
        table.to_csv(csv, index=False)
        md.write_text(auc_markdown_report(title, shown))
        mean = table.iloc[-1]
        ci = interval_text(table, mean)
        roc_figure(scores, labels, test.datalist.classes, table, png,
                   title=f"{test.name}: {len(labels)} images, mean AUC over diseases {format_value(mean['auc'])}{ci}")
        reliability = Path(f"{stem}_reliability.png")
        reliability_figure(sigmoid(scores), labels, test.datalist.classes, table, reliability,
                           title=f"{test.name}: {len(labels)} images, mean ECE over diseases "
                                 f"{format_value(mean['ece'])}")
        self.written += [(f"test table '{test.name}'", csv), (f"test table '{test.name}' (Markdown)", md),
                         (f"ROC figure '{test.name}'", png), (f"reliability figure '{test.name}'", reliability)]
        if self.tracker is not None:
            values = {f"test_{test.name}_mean_auc": float(mean["auc"]),
                      f"test_{test.name}_mean_ece": float(mean["ece"])}
            if "sensitivity" in table:
                values.update({f"test_{test.name}_mean_sensitivity": float(mean["sensitivity"]),
                               f"test_{test.name}_mean_specificity": float(mean["specificity"])})
            if "ci_low" in table:
                values.update({f"test_{test.name}_mean_auc_ci_low": float(mean["ci_low"]),
                               f"test_{test.name}_mean_auc_ci_high": float(mean["ci_high"])})
            self.tracker.log_values({k: v for k, v in values.items() if not np.isnan(v)})
            for path in (csv, md, png, reliability):
                self.tracker.log_file(path, "test")


def _threshold_origin(chosen_on: str | None, tested_on: str | None) -> str:
    """Where the operating thresholds of a table come from; a warning when it is the split tested."""
    if chosen_on is None:
        return "operating thresholds given, not chosen on data"
    text = f"operating thresholds chosen on the '{chosen_on}' split"
    if chosen_on == tested_on:
        text += " (this one: sensitivity and specificity are optimistic, measure them on another split)"
    return text


def _same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (TypeError, OSError):
        return False


def _print_notes(notes) -> None:
    from .operating import threshold_notes_line

    line = threshold_notes_line(notes)
    if line:
        print(line, flush=True)


def _describe_checkpoint(path) -> str:
    """``<absolute path> (written <time>; <classes and input size of its run record>)``."""
    import datetime

    path = Path(path)
    parts = [f"written {datetime.datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M}"]
    record = record_path(path)
    if record.is_file():
        try:
            info = read_record(record)
            parts.append(f"{len(info.get('classes') or [])} classes, {info.get('image_size')} px, data list "
                         f"{info.get('datalist')}")
        except (ValueError, AttributeError):
            pass
    return f"{path.resolve()} ({'; '.join(parts)})"
