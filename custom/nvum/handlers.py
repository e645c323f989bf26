"""The NVUM handlers: the memory update (eq. 3) and the EMA teacher of the authors' code."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..data.datalist import INDEX_KEY
from ..flags import as_bool
from .gather import RowGatherer
from .memory import NVUMMemory

SCHEDULES = ("epoch", "iteration")


class EMATeacher:
    """An exponential-moving-average copy of the network (the "teacher" of the authors' code).

    After every optimiser step: ``teacher = decay * teacher + (1 - decay) * student`` for the
    weights and, with ``include_buffers``, for the BatchNorm running statistics too. Wraps
    ignite's :class:`~ignite.handlers.EMAHandler`. When ``use`` is false it does nothing and
    :attr:`eval_network` is the student itself, so configs can reference it unconditionally.

    A decay per step means a different teacher for every epoch length: the authors' 0.99 averages
    about the last 100 steps, a few percent of an NIH epoch (5,000 steps at batch 16) but 12
    epochs of a 500-image run at batch 64, whose teacher then lags far behind the student.
    ``halflife_epochs`` sets the decay from the epoch length instead: the teacher's weight on the
    student of ``halflife_epochs`` epochs ago is one half, ``decay = 0.5 ** (1 / (halflife_epochs *
    steps_per_epoch))``.

    Args:
        network: the student network.
        decay: weight of the old teacher per step, 0.99 in the authors' code.
        use: create and update the teacher (train.json's ``nvum#use_teacher``); otherwise validation,
            test and export use the student.
        include_buffers: average the buffers (BN statistics) too; otherwise copy them.
        halflife_epochs: when set, replaces ``decay`` as above (with the trainer's epoch length).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        decay: float = 0.99,
        use: bool = True,
        include_buffers: bool = True,
        halflife_epochs: float | None = None,
    ):
        self.student = network
        self.enabled = as_bool(use, "use_teacher")
        self.decay = float(decay)
        self.halflife_epochs = float(halflife_epochs) if halflife_epochs not in (None, "", "null") else None
        if self.halflife_epochs is not None and not self.halflife_epochs > 0:
            raise ValueError(f"teacher_halflife_epochs must be positive, got {halflife_epochs}")
        self._ema = (
            EMAHandler(network, momentum=1.0 - self.decay, handle_buffers="update" if include_buffers else "copy")
            if self.enabled
            else None
        )

    @property
    def model(self) -> torch.nn.Module | None:
        """The teacher network (in eval mode), or ``None`` when disabled."""
        return self._ema.ema_model if self._ema is not None else None

    @property
    def eval_network(self) -> torch.nn.Module:
        """The network to validate, test and export: the teacher when enabled, else the student."""
        return self.model if self.model is not None else self.student

    def attach(self, engine: Engine) -> None:
        if self._ema is None:
            return
        if self.halflife_epochs is not None:
            engine.add_event_handler(Events.STARTED, self._decay_from_epoch_length)
        self._ema.attach(engine, name="ema_momentum", event=Events.ITERATION_COMPLETED)

    def _decay_from_epoch_length(self, engine: Engine) -> None:
        self.decay = 0.5 ** (1.0 / (self.halflife_epochs * engine.state.epoch_length))
        self._ema.momentum = engine.state.ema_momentum = 1.0 - self.decay

    def state_dict(self) -> dict:
        return self.model.state_dict() if self.model is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.model is not None and state:
            self.model.load_state_dict(state)


class MemoryUpdater:
    """Updates the NVUM memory from the training engine (eq. 3); the loss only reads it.

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
        teacher: optional :class:`EMATeacher`; used by the ``iteration`` schedule. Attach the
            teacher before this handler so that it is updated first.
        enabled: false to leave the memory untouched (losses without a memory).
        before_loss: update each row when its batch is visited, before the loss (see above).
    """

    def __init__(
        self,
        memory: NVUMMemory,
        schedule: str = "epoch",
        teacher: EMATeacher | None = None,
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
