"""The NVUM handlers: the memory update (eq. 3) and the EMA teacher of the authors' code."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.utils.enums import CommonKeys as Keys

from ..flags import as_bool
from ..training.distributed import RowGatherer
from ..training.engine import INDEX_KEY
from .memory import NVUMMemory

SCHEDULES = ("epoch", "iteration")


class EMATeacher:
    """An exponential-moving-average copy of the network (the "teacher" of the authors' code).

    After every optimiser step: ``teacher = decay * teacher + (1 - decay) * student`` for the
    weights and, with ``include_buffers``, for the BatchNorm running statistics too. Wraps
    ignite's :class:`~ignite.handlers.EMAHandler`. When ``enabled`` is false it does nothing and
    :attr:`eval_network` is the student itself, so configs can reference it unconditionally.

    Args:
        network: the student network.
        decay: weight of the old teacher, 0.99 in the authors' code.
        enabled: create and update the teacher.
        include_buffers: average the buffers (BN statistics) too; otherwise copy them.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.99, enabled: bool = True, include_buffers: bool = True):
        self.student = network
        self.enabled = as_bool(enabled, "use_teacher")
        self.decay = float(decay)
        self._ema = EMAHandler(network, momentum=1.0 - self.decay, handle_buffers="update" if include_buffers else "copy") if self.enabled else None

    @property
    def model(self) -> torch.nn.Module | None:
        """The teacher network (in eval mode), or ``None`` when disabled."""
        return self._ema.ema_model if self._ema is not None else None

    @property
    def eval_network(self) -> torch.nn.Module:
        """The network to validate, test and export: the teacher when enabled, else the student."""
        return self.model if self.model is not None else self.student

    def attach(self, engine: Engine) -> None:
        if self._ema is not None:
            self._ema.attach(engine, name="ema_momentum", event=Events.ITERATION_COMPLETED)

    def state_dict(self) -> dict:
        return self.model.state_dict() if self.model is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.model is not None and state:
            self.model.load_state_dict(state)


class MemoryUpdater:
    """Updates the NVUM memory from the training engine (eq. 3); the loss only reads it.

    Schedules:

    - ``epoch`` (paper): the logits of every training image are collected during the epoch (the
      student's forward pass of the training step) and the memory is updated once, at the end of
      the epoch, for every image seen in it.
    - ``iteration`` (authors' code): after every optimiser step, the rows of the batch are
      updated from the logits of the EMA ``teacher`` on the batch (from the student's logits of
      the step when there is no teacher).

    In data-parallel training every rank gathers the indices and logits of all ranks before
    writing (:meth:`_gather`), so the memory stays identical on every rank.

    Args:
        memory: the :class:`~custom.nvum.NVUMMemory`.
        schedule: ``"epoch"`` or ``"iteration"``.
        teacher: optional :class:`EMATeacher`; used by the ``iteration`` schedule. Attach the
            teacher before this handler so that it is updated first.
        enabled: false to leave the memory untouched (losses without a memory).
    """

    def __init__(self, memory: NVUMMemory, schedule: str = "epoch", teacher: EMATeacher | None = None, enabled: bool = True):
        if schedule not in SCHEDULES:
            raise ValueError(f"memory schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.memory, self.schedule, self.teacher, self.enabled = memory, schedule, teacher, as_bool(enabled)
        self._pending = None  # (N, C) logits collected in the current epoch
        self._seen = None  # (N,) bool
        self._gatherer = RowGatherer(memory.num_samples)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if self.schedule == "epoch":
            engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._update_epoch)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._update_iteration)

    def _reset(self, engine: Engine | None = None) -> None:
        values = self.memory.values
        self._pending = torch.zeros_like(values)
        self._seen = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)

    def _collect(self, engine: Engine) -> None:
        if self._pending is None:
            self._reset()
        index, logits = self._gather(engine, engine.state.output[INDEX_KEY], engine.state.output[Keys.PRED].detach().float())
        index = self.memory._check_index(index)
        self._pending[index] = logits.to(self._pending.device)
        self._seen[index] = True

    def _update_epoch(self, engine: Engine) -> None:
        if self._seen is None or not bool(self._seen.any()):
            return
        index = torch.nonzero(self._seen).flatten()
        self.memory.update(index, self._pending[index])
        self._pending, self._seen = None, None

    @torch.no_grad()
    def _update_iteration(self, engine: Engine) -> None:
        out = engine.state.output
        teacher = self.teacher.model if self.teacher is not None else None
        if teacher is not None:
            with torch.autocast(out[Keys.IMAGE].device.type, enabled=bool(getattr(engine, "amp", False))):
                logits = teacher(out[Keys.IMAGE])
        else:
            logits = out[Keys.PRED]
        self.memory.update(*self._gather(engine, out[INDEX_KEY], logits.detach().float()))

    def _gather(self, engine: Engine, index: torch.Tensor, logits: torch.Tensor):
        """The step's ``(index, logits)`` of every rank, each image once per epoch (see
        :class:`custom.distributed.RowGatherer`); unchanged in a single process."""
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
