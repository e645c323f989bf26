"""The NVUM memory: a running, prior-corrected average of every training image's logits, and its updater.

Paper (eq. 3): ``t_i <- beta * t_i + (1 - beta) * (z_i - log pi)`` with ``t`` an N x C float32
tensor initialised with zeros, ``z_i`` the logits of training image ``i`` and ``pi`` the class
prior estimated from the noisy training labels. :class:`MemoryUpdater` applies it from the training
engine (the loss only reads the memory).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from ..data.datalist import INDEX_KEY
from ..flags import as_bool
from ..labels import NO_FINDING
from .gather import RowGatherer

PRIOR_METHODS = ("frequency", "no_finding_scaled")
SCHEDULES = ("epoch", "iteration")


def class_prior(labels, classes: Sequence[str], method: str = "frequency") -> torch.Tensor:
    """Class prior ``pi`` estimated from the (noisy) training labels.

    Args:
        labels: N x C array-like of 0/1 training labels.
        classes: the C class names, in label order.
        method: ``"frequency"`` (paper: ``pi(c) = mean(y[:, c])``) or ``"no_finding_scaled"``
            (authors' code: ``pi(NF) = freq(NF)`` and ``pi(c) = (1 - freq(NF)) * freq(c)`` for
            every disease ``c``; needs a ``No Finding`` class).

    Returns:
        float32 tensor of shape (C,), every value in (0, 1]. A class without any positive
        gets ``0.5 / N`` (with a warning) so that ``log pi`` stays finite.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != len(classes):
        raise ValueError(f"labels must have shape (N, {len(classes)}) to match the classes, got {y.shape}")
    if y.shape[0] == 0:
        raise ValueError("cannot estimate a class prior from an empty training set")
    freq = y.mean(axis=0)
    if method == "frequency":
        prior = freq
    elif method == "no_finding_scaled":
        if NO_FINDING not in classes:
            raise ValueError(f"prior 'no_finding_scaled' needs a '{NO_FINDING}' class; classes are {list(classes)}")
        nf = list(classes).index(NO_FINDING)
        prior = (1.0 - freq[nf]) * freq
        prior[nf] = freq[nf]
    else:
        raise ValueError(f"unknown prior method {method!r}; expected one of {PRIOR_METHODS}")
    floor = 0.5 / y.shape[0]
    empty = [classes[c] for c in np.flatnonzero(prior < floor)]
    if empty:
        warnings.warn(f"classes without positive training labels get prior {floor:.3g}: {empty}", stacklevel=2)
    return torch.as_tensor(np.maximum(prior, floor), dtype=torch.float32)


class NVUMMemory(nn.Module):
    """Non-volatile unbiased memory ``t`` (N x C, float32, zeros at start).

    The memory never receives gradient: it is a buffer, read by the loss with :meth:`forward`
    and written by :class:`custom.nvum.MemoryUpdater` with :meth:`update`. Both the memory and
    the log prior are buffers, so they travel with ``state_dict()`` into checkpoints.

    Args:
        num_samples: N, the number of training images (dataset indices run from 0 to N - 1).
        prior: (C,) class prior ``pi`` (see :func:`class_prior`).
        momentum: beta of eq. 3, in [0, 1]; 0.9 in the paper.
        unbiased: subtract ``log pi`` from the logits in the update (the "U" of NVUM). ``False``
            stores plain logits, for the ablations that move the prior into the loss instead.
        device: where the memory lives (default: the CPU).
    """

    def __init__(self, num_samples: int, prior, momentum: float = 0.9, unbiased: bool = True, device=None):
        super().__init__()
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"memory momentum (beta) must be in [0, 1], got {momentum}")
        prior = torch.as_tensor(prior, dtype=torch.float32).flatten()
        if torch.any(prior <= 0) or torch.any(prior > 1):
            raise ValueError(f"class prior values must be in (0, 1], got {prior.tolist()}")
        self.momentum = float(momentum)
        self.unbiased = as_bool(unbiased, "unbiased")
        self.register_buffer("values", torch.zeros(int(num_samples), prior.numel(), dtype=torch.float32))
        self.register_buffer("log_prior", torch.log(prior))
        if device is not None:
            self.to(device)

    @property
    def num_samples(self) -> int:
        return self.values.shape[0]

    @property
    def num_classes(self) -> int:
        return self.values.shape[1]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Memory rows of the given dataset indices: (B,) int64 -> (B, C) float32."""
        return self.values[self.check_index(index)]

    @torch.no_grad()
    def update(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        """EMA update (eq. 3) of the rows ``index`` with ``logits``.

        Args:
            index: (B,) int64 dataset indices, unique within one call.
            logits: (B, C) logits of those images (any float dtype; computed in float32).
        """
        index = self.check_index(index)
        target = logits.detach().to(device=self.values.device, dtype=torch.float32)
        if self.unbiased:
            target = target - self.log_prior
        if target.shape != (index.numel(), self.num_classes):
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} do not match {index.numel()} indices x "
                f"{self.num_classes} classes"
            )
        self.values[index] = self.momentum * self.values[index] + (1.0 - self.momentum) * target

    def check_index(self, index) -> torch.Tensor:
        """``index`` as a flat int64 tensor on the memory's device; :class:`IndexError` when a row is out of range."""
        index = torch.as_tensor(index, device=self.values.device).long().flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_samples):
            raise IndexError(
                f"dataset index out of range for a memory of {self.num_samples} training images: "
                f"min {int(index.min())}, max {int(index.max())}"
            )
        return index

    @classmethod
    def from_datalist(cls, datalist, prior: str = "frequency", momentum: float = 0.9, unbiased: bool = True,
                      device=None) -> "NVUMMemory":
        """The memory of a data list's training split (train.json's ``memory``): one row per training image,
        the prior estimated from the training labels with :func:`class_prior` (``prior`` names the method).
        train.json's ``memory_updater`` (:class:`custom.nvum.MemoryUpdater`) writes it."""
        labels = datalist.labels("training")
        return cls(len(labels), class_prior(labels, datalist.classes, prior), momentum, unbiased, device)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, num_classes={self.num_classes}, momentum={self.momentum}, "
                f"unbiased={self.unbiased}")


class MemoryUpdater:
    """Updates the NVUM memory from the training engine (eq. 3); the loss only reads it. A handler of
    ``train#handlers`` (after the EMA teacher), saved in the resume checkpoints (``memory_updater``).

    Every training image's row is updated once per epoch. When, and from which logits:

    - ``before_loss`` (the paper's order, eq. 3 and Fig. 1: update, then minimise): when an
      image's batch is visited, after the forward pass and before the loss, from the step's
      logits (``epoch`` schedule) or from the EMA ``teacher``'s logits on the batch
      (``iteration`` schedule with a teacher, as the authors' code does). The memory that epoch
      ``k``'s loss reads already holds epoch ``k``'s prediction of the image, so the regulariser
      has a gradient from the first step on.
    - otherwise, ``epoch`` schedule: the step's logits are collected during the epoch and every
      row is updated at the end of the epoch, so epoch ``k`` reads the memory of epoch ``k - 1``
      (all zeros in the first epoch, where the regulariser is the constant ``-log 2``).
    - otherwise, ``iteration`` schedule: after every optimiser step, from the teacher's logits
      on the batch (the step's logits when there is no teacher).

    In data-parallel training every rank gathers the indices and logits of all ranks before
    writing (:meth:`_gather`), so the memory stays identical on every rank.

    Args:
        memory: the :class:`~custom.nvum.NVUMMemory`.
        schedule: ``"epoch"`` or ``"iteration"``.
        teacher: optional :class:`custom.nvum.teacher.EMATeacher`; used by the ``iteration`` schedule. Attach the
            teacher before this handler so that it is updated first.
        enabled: false to leave the memory untouched (losses without a memory: train.json passes the loss's
            ``uses_memory``).
        before_loss: update each row when its batch is visited, before the loss (see above).
    """

    def __init__(
        self,
        memory: NVUMMemory,
        schedule: str = "epoch",
        teacher=None,
        enabled: bool = True,
        before_loss: bool = False,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"memory schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.memory, self.schedule, self.teacher, self.enabled = memory, schedule, teacher, as_bool(enabled)
        self.before_loss = as_bool(before_loss, "update_before_loss")
        self._pending = None  # (N, C) logits collected in the current epoch
        self._seen = None  # (N,) bool
        self._gatherer = RowGatherer(memory.num_samples)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if self.before_loss:
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._update_step)
        elif self.schedule == "epoch":
            engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._update_epoch)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._update_step)

    def _reset(self, engine: Engine | None = None) -> None:
        values = self.memory.values
        self._pending = torch.zeros_like(values)
        self._seen = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)

    def _collect(self, engine: Engine) -> None:
        if self._pending is None:
            self._reset()
        index, logits = self._gather(
            engine, engine.state.output[INDEX_KEY], engine.state.output[Keys.PRED].detach().float()
        )
        index = self.memory.check_index(index)
        self._pending[index] = logits.to(self._pending.device)
        self._seen[index] = True

    def _update_epoch(self, engine: Engine) -> None:
        if self._seen is None or not bool(self._seen.any()):
            return
        index = torch.nonzero(self._seen).flatten()
        self.memory.update(index, self._pending[index])
        self._pending, self._seen = None, None

    @torch.no_grad()
    def _update_step(self, engine: Engine) -> None:
        """Eq. 3 for the rows of the step's batch (``before_loss`` or the ``iteration`` schedule)."""
        out = engine.state.output
        teacher = self.teacher.model if self.teacher is not None and self.schedule == "iteration" else None
        if teacher is not None:
            with torch.autocast(out[Keys.IMAGE].device.type, enabled=bool(getattr(engine, "amp", False))):
                logits = teacher(out[Keys.IMAGE])
        else:
            logits = out[Keys.PRED]
        self.memory.update(*self._gather(engine, out[INDEX_KEY], logits.detach().float()))

    def _gather(self, engine: Engine, index: torch.Tensor, logits: torch.Tensor):
        """The step's ``(index, logits)`` of every rank, each image once per epoch (see
        :class:`custom.nvum.gather.RowGatherer`); unchanged in a single process."""
        return self._gatherer(index, logits, engine.state.epoch)

    def state_dict(self) -> dict:
        """The logits collected so far in the current epoch (``epoch`` schedule), for exact resume."""
        if self._seen is None:
            return {}
        return {"pending": self._pending.clone(), "seen": self._seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._pending = state["pending"].to(self.memory.values.device)
            self._seen = state["seen"].to(self.memory.values.device)
        else:
            self._pending, self._seen = None, None
