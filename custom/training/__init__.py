"""The training workflow around the method: engine, checkpoints and resume, progress, tracking, multi-process
training."""

from . import distributed
from ..record import RunRecord, read_record
from .checkpoints import (CheckpointSaver, CheckpointWriteError, EpochSeeder, ResumeLoader, TrainingCheckpointSaver,
                          ValidationState, find_checkpoint)
from .engine import INDEX_KEY, NonFiniteLossError, NVUMTrainer
from .performance import PrepareImageBatch, memory_format
from .progress import EpochSummary, HandlerGroup, LossAverages, ProgressBar, RunSummary
from .tracking import MLflowTracker, default_tracking_uri
