"""Python components of the NVUM bundle, referenced from the bundle configs as ``custom.<name>``.

The runtime part, what the configs name at run time, is organised by concern:

- :mod:`custom.nvum`: the method (memory, losses, the memory and teacher handlers);
- :mod:`custom.training`: engine, checkpoints and resume, progress, MLflow tracking, multi-process training;
- :mod:`custom.data`: data lists and image transforms; the synthetic data set (:mod:`custom.data.synthetic`);
- :mod:`custom.evaluation`: AUC metrics and test reports;
- :mod:`custom.serving`: network loaders, inference components, the MLflow pyfunc model;
- :mod:`custom.deploy`: TorchScript export, bundle zip and MLflow registration at the end of training;
- :mod:`custom.networks`, :mod:`custom.labels`, :mod:`custom.flags`: networks and weights, class vocabularies,
  config flags;
- :mod:`custom.console`: what a command prints when it fails (the project's message on the last line), noise filters.

The tools (data-list builders, audit, benchmarks, noise benchmark, pre-flight check, command line)
live in :mod:`custom.tools`; they import the runtime part, never the other way round, and they
are not shipped with the deployable bundle.
"""

from .config import check_bundle_command
from .console import filter_third_party_noise, install_excepthook
from .data import (ChestXrayDicomReader, ChestXrayToTensord, DataList, DataListError, LoadImageChestXrayd,
                   NormaliseChestXrayBatch, RandResizedCropd, dicom_guard_enabled, open_datalist, real_datalist)
from .deploy import ModelRegistrar
from .evaluation import (MultiLabelAUC, OODGate, TestReport, mean_auc, ood_gate_enabled, per_class_auc,
                         predict)
from .flags import as_bool
from .labels import CHEXPERT8_CLASSES, NIH14_CLASSES, NO_FINDING, disease_indices
from .evaluation.operating import OperatingThresholds  # the step choosing thresholds after training
from .networks import build_network, load_pretrained, load_weights, memory_format, prepare_network
from .nvum import (BCELoss, EMATeacher, FocalLoss, MemoryUpdater, NVUMLoss, NVUMMemory, build_loss, class_prior,
                   log1m_sigmoid)
from .serving import (BundleNetwork, HeatmapWriter, InferenceDataset, ProbabilityWriter, list_inputs,
                      load_inference_network)
from .training import (BestModelSaver, CheckpointLoader, CheckpointSaver, CheckpointWriteError, EpochReseed,
                       FolderInUseError, LossAverages, MLflowTracker, NonFiniteLossError, NVUMTrainer, RunLock,
                       RunRecord, RunSummary, ValidationState, default_tracking_uri, distributed, listed)

filter_third_party_noise()
if install_excepthook():  # only under `python -m monai.bundle` (custom.cli installs it itself)
    check_bundle_command()  # a misspelt setting stops the command before anything is built
