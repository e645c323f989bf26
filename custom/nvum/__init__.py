"""The NVUM method: the memory (eq. 3), the losses (eq. 1-2 and the baselines), the handlers that update the memory."""

from .handlers import EMATeacher, MemoryUpdater
from .losses import BCELoss, FocalLoss, NVUMLoss, build_loss, log1m_sigmoid
from .memory import NVUMMemory, class_prior
