"""Deployment at the end of training: TorchScript export, offline checks, bundle zip, MLflow registration."""

from .export import BUNDLE_NAME, Deployable, build_bundle
from .registry import DEFAULT_MODEL_NAME, ModelRegistrar, log_pyfunc_model
