"""The NVUM method: the memory (eq. 3) and its updater, the losses (eq. 1-2 and the baselines), the EMA teacher."""

from .losses import BCELoss, FocalLoss, NVUMLoss, build_loss, log1m_sigmoid
from .memory import MemoryUpdater, NVUMMemory, class_prior
from .teacher import EMATeacher
