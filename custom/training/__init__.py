"""The training workflow around the method: engine, checkpoints and resume, progress, tracking, multi-process
training."""

from . import distributed
from ..record import RunRecord, read_record, run_record
from .checkpoints import CheckpointSaver, CheckpointWriteError, ValidationState, find_checkpoint
from .engine import INDEX_KEY, NonFiniteLossError, NVUMTrainer, epoch_seed
from .progress import LossAverages, RunSummary
from .tracking import MLflowTracker, default_tracking_uri
