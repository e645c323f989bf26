"""Python components of the NVUM bundle, referenced from the bundle configs as ``custom.<name>``."""

from .checkpoints import CheckpointSaver, CheckpointWriteError, EpochSeeder, ResumeLoader, RunInfo, TrainingCheckpointSaver, ValidationState
from .data import DataList, DataListError, synthetic_datalist
from .deploy import BundleNetwork, ModelRegistrar, load_inference_network
from .engines import NonFiniteLossError, NVUMTrainer
from .evaluation import TestReport, predict
from .handlers import EMATeacher, EpochSummary, HandlerGroup, LossAverages, MemoryUpdater, MLflowTracker, ProgressBar, default_tracking_uri
from .inference import ProbabilityWriter, list_inputs
from .labels import CHEXPERT8_CLASSES, NIH14_CLASSES, NO_FINDING, disease_indices
from .losses import BCELoss, FocalLoss, NVUMLoss, build_loss, log1m_sigmoid
from .memory import NVUMMemory, class_prior
from .metrics import MultiLabelAUC, mean_auc, per_class_auc
from .networks import load_pretrained, load_weights
from .performance import PrepareImageBatch, memory_format
from . import distributed
