"""Evaluation: per-class AUC (validation metric), bootstrap intervals, test reports."""

from .metrics import MultiLabelAUC, bootstrap_auc, mean_auc, per_class_auc
from .operating import OperatingThresholds
from .predict import predict
from .report import TestReport
from .ood import FeatureDistance, OODGate, fit_gate, load_gate, ood_gate_enabled, ood_path
