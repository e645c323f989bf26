"""The training workflow around the method: engine, checkpoints and resume, progress, tracking, multi-process
training."""

from . import distributed
from ..record import RunRecord, read_record
from .checkpoints import (BestModelSaver, CheckpointLoader, CheckpointSaver, CheckpointWriteError, ValidationState,
                          epoch_checkpoints, find_checkpoint)
from .engine import INDEX_KEY, EpochReseed, NonFiniteLossError, NVUMTrainer, epoch_seed, listed
from .progress import LossAverages, RunSummary
from .runlock import FolderInUseError, RunLock
from .tracking import MLflowTracker, default_tracking_uri
