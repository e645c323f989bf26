"""Inference: the bundle's network loaders, the inference config's components, the MLflow pyfunc model."""

from .heatmaps import GradCAMMaps, HeatmapWriter, target_layer
from .inference import InferenceDataset, ProbabilityWriter, list_inputs
from .loaders import BundleNetwork, TorchScriptRunner, load_inference_network
