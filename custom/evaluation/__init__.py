"""Evaluation: per-class AUC (validation metric), bootstrap intervals, test reports."""

from .metrics import MultiLabelAUC, bootstrap_auc, mean_auc, per_class_auc
from .operating import OperatingThresholds
from .report import TestReport, predict
