"""The EMA teacher of the authors' code: an exponential moving average of the network's weights."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from ..flags import as_bool


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
