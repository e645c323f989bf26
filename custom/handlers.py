"""Ignite handlers of the NVUM bundle: memory update, EMA teacher, progress, summaries, MLflow."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.handlers import MLFlowHandler
from monai.utils.enums import CommonKeys as Keys

from .distributed import RowGatherer
from .engines import INDEX_KEY
from .memory import NVUMMemory
from .utils import as_bool

SCHEDULES = ("epoch", "iteration")
#: parts of the training step's output that are averaged, shown and logged.
LOSS_PARTS = ("loss", "bce", "reg")


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
        memory: the :class:`~custom.memory.NVUMMemory`.
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


class HandlerGroup:
    """Attaches several handlers, in order, as one list entry.

    Handlers that other config objects reference (the EMA teacher, the memory updater, the
    MLflow tracker) are defined once at the top level of the config; a handler list refers to
    them through a group so that every entry of the list stays a ``_target_`` object, as MONAI's
    bundle property checks expect.
    """

    def __init__(self, handlers):
        self.handlers = list(handlers)

    def attach(self, engine: Engine) -> None:
        for handler in self.handlers:
            handler.attach(engine)


class LossAverages:
    """Epoch averages of the loss and its parts, as ``train_<key>`` in ``engine.state.metrics``.

    Args:
        keys: keys of the training step's output to average (``loss``, ``bce``, ``reg``).
    """

    def __init__(self, keys=LOSS_PARTS):
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> None:
        from ignite.metrics import Average

        for key in self.keys:
            Average(output_transform=lambda out, k=key: out[k].detach()).attach(engine, f"train_{key}")


class ProgressBar:
    """A tqdm progress bar over the iterations of each epoch, showing the loss and its parts.

    Shown on terminals only (``disable=None``), so that logs of batch jobs stay readable; the
    one-line :class:`EpochSummary` is printed either way.
    """

    def __init__(self, keys=LOSS_PARTS, persist: bool = False):
        from ignite.handlers import ProgressBar as IgniteProgressBar

        self.keys = tuple(keys)
        self._bar = IgniteProgressBar(persist=persist, disable=None)

    def _output(self, output: dict) -> dict:
        return {k: output[k].detach().item() for k in self.keys if k in output}

    def attach(self, engine: Engine) -> None:
        self._bar.attach(engine, output_transform=self._output)


class EpochSummary:
    """Prints one line per epoch: losses, validation metric, best so far, and time.

    Attach it to the trainer after the validation handler.

    Args:
        evaluator: the validation engine (its ``key_metric`` is reported).
        max_epochs: shown as ``epoch k/max``.
    """

    def __init__(self, evaluator: Engine | None = None, max_epochs: int | None = None):
        self.evaluator, self.max_epochs = evaluator, max_epochs
        self._start = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        parts = [f"epoch {engine.state.epoch}/{self.max_epochs or engine.state.max_epochs}"]
        parts += [f"{k} {metrics[k]:.4f}" for k in (f"train_{p}" for p in LOSS_PARTS) if k in metrics]
        ev = self.evaluator
        if ev is not None and getattr(ev.state, "key_metric_name", None):
            name = ev.state.key_metric_name
            value = ev.state.metrics.get(name)
            if value is not None:
                parts.append(f"{name} {value:.4f}")
            parts.append(f"best {ev.state.best_metric:.4f} (epoch {ev.state.best_metric_epoch})")
        if self._start is not None:
            parts.append(f"{time.perf_counter() - self._start:.1f}s")
        print(" | ".join(parts), flush=True)


def default_tracking_uri(output_dir) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a sqlite store in ``output_dir/mlruns.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str((Path(output_dir) / "mlruns.db").resolve())


class MLflowTracker(MLFlowHandler):
    """MONAI's :class:`~monai.handlers.MLFlowHandler` that can be switched off from config and
    that also logs files and metrics for code outside the engines (the final test report).

    Args:
        enabled: false attaches nothing and logs nothing.
        output_dir: where the default sqlite store and artifacts go (see :func:`default_tracking_uri`).
        kwargs: passed to ``MLFlowHandler`` (``tracking_uri`` overrides the default).
    """

    def __init__(self, enabled: bool = True, output_dir: str = ".", **kwargs):
        self.enabled = as_bool(enabled, "mlflow")
        if not self.enabled:  # no MLflow client at all: it would create a store in the working directory
            self.cur_run, self.run_name, self.experiment_param = None, kwargs.get("run_name"), None
            return
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("tracking_uri", default_tracking_uri(output_dir))
        kwargs.setdefault("artifact_location", (Path(output_dir) / "mlartifacts").resolve().as_uri())
        super().__init__(**kwargs)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def start(self, engine: Engine | None = None) -> None:
        """Start a new run, unless this tracker already has one.

        Unlike ``MLFlowHandler.start``, an unnamed tracker never resumes some other unfinished
        run of the experiment (for example one left behind by a crashed process).
        """
        if not self.enabled:
            return
        if not self.cur_run:
            self._set_experiment()
            name = self.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"
            self.cur_run = self.client.create_run(experiment_id=self.experiment.experiment_id, run_name=name)
        if engine is not None:
            super().start(engine)
        elif self.experiment_param:
            self._log_params(self.experiment_param)

    @property
    def run_id(self) -> str | None:
        return self.cur_run.info.run_id if self.enabled and self.cur_run else None

    def log_file(self, path, artifact_path: str | None = None) -> None:
        """Log a file as an artifact of the current run (started if needed; no-op when disabled)."""
        self.start()
        if self.run_id:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_values(self, metrics: dict, step: int | None = None) -> None:
        """Log scalar metrics to the current run (started if needed; no-op when disabled)."""
        self.start()
        if self.run_id:
            self._log_metrics(metrics, step=step)

    def finish(self) -> None:
        """End the current run (marks it FINISHED)."""
        if self.run_id:
            self.close()
