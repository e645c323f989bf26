"""Checkpoints that survive crashes: safe writes, exact resume, per-epoch random seeds.

A training run can be stopped at any point (``kill -9`` in the middle of an epoch included) and
continued with ``--resume true``: it restarts from the last epoch checkpoint with the network,
optimiser, learning-rate scheduler, EMA teacher, NVUM memory (and the logits the memory updater
had collected), the trainer's epoch/iteration counters, the best validation score so far and the
AMP grad scaler restored. The random streams are made a function of ``(seed, epoch)``: every
random number generator (torch, numpy, python, and the random transforms of the training
pipeline) is reseeded at the start of every epoch by :class:`custom.NVUMTrainer`, so the resumed epoch
draws exactly the same shuffling, augmentation and memory mixing as the uninterrupted run would
have. The final memory and validation AUC of a resumed run therefore equal those of an
uninterrupted run with the same seed (tested with a real ``SIGKILL``).

Every checkpoint is written to a temporary file in its folder and renamed over the target
(ignite's atomic ``DiskSaver``): a crash or a failed write never leaves a truncated checkpoint,
and the previous checkpoint is deleted only after the new one is complete. A failed write stops
training with :class:`CheckpointWriteError`, whose message names the path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from ..record import RunRecord, run_record

logger = logging.getLogger(__name__)

#: file names of the per-epoch training checkpoints (ignite's ``{prefix}_{name}={epoch}.pt``).
CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space, no permission, ...); names the path."""


class _ReportingSaveHandler(BaseSaveHandler):
    """Wraps ignite's atomic ``DiskSaver``: a failed write names its file, and older checkpoints
    are deleted only after the new one is complete.

    (ignite's ``Checkpoint`` asks to remove the checkpoint it replaces *before* writing the new
    one; here that removal is deferred until the write has succeeded.)
    """

    def __init__(self, inner: BaseSaveHandler, record=None):
        self.inner, self.record = inner, record
        self._pending_removals: list[str] = []

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        path = Path(getattr(self.inner, "dirname", ".")) / (getattr(self.inner, "filename", None) or filename)
        try:
            self.inner(checkpoint, filename, metadata)
        except OSError as e:
            raise CheckpointWriteError(
                e.errno,
                f"could not write checkpoint {path}: {e.strerror or e}. Nothing was replaced: checkpoints "
                "are written to a temporary file and renamed, so the previous checkpoint in that folder is intact",
            ) from e
        if self.record is not None and self._writes_here():
            self.record.write(path.with_suffix(".json"))
        pending, self._pending_removals = self._pending_removals, []
        if getattr(self.inner, "filename", None):  # MONAI's fixed-name saver (model.pt): overwritten in place
            return
        for old in pending:
            if old != filename:
                self.inner.remove(old)

    def remove(self, filename: str) -> None:
        self._pending_removals.append(filename)

    def _writes_here(self) -> bool:
        """Whether this process writes the files: under several processes, ignite's ``DiskSaver`` writes on
        its ``save_on_rank`` only (the run record beside the weights follows it; every rank writing it
        raced on the same temporary file)."""
        import ignite.distributed as idist

        return idist.get_rank() == getattr(self.inner, "save_on_rank", 0)


def _make_safe(saver: _MonaiCheckpointSaver, record=None) -> None:
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        checkpoint = getattr(saver, name, None)
        if isinstance(checkpoint, Checkpoint) and not isinstance(checkpoint.save_handler, _ReportingSaveHandler):
            checkpoint.save_handler = _ReportingSaveHandler(checkpoint.save_handler, record)


class ValidationState:
    """The best validation score so far and the best-model saver's record of it, for resume.

    Without it a resumed run would take its first validated epoch as the best and overwrite
    ``model.pt`` even with a worse network.

    Args:
        evaluator: the validation engine (its ``state.best_metric`` / ``best_metric_epoch``).
        best_saver: the ``CheckpointSaver`` writing the best model.
    """

    def __init__(self, evaluator: Engine, best_saver: _MonaiCheckpointSaver | None = None):
        self.evaluator, self.best_saver = evaluator, best_saver

    def _checkpoint(self):
        return getattr(self.best_saver, "_key_metric_checkpoint", None)

    def state_dict(self) -> dict:
        state = {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }
        if self._checkpoint() is not None:
            state["saved"] = [[float(p), str(f)] for p, f in self._checkpoint().state_dict()["_saved"]]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self._checkpoint() is not None and "saved" in state:
            self._checkpoint().load_state_dict({"_saved": [(p, f) for p, f in state["saved"]]})


class CheckpointSaver(_MonaiCheckpointSaver):
    """The run's checkpoints: one per epoch for resume, and the run record beside the best model.

    MONAI's ``CheckpointSaver`` (ignite's atomic writes) attached to the trainer after the
    validation handler (so that each checkpoint holds that epoch's validation state), saving
    ``save_dict`` every ``save_interval`` epochs (``checkpoint_epoch=K.pt``, the last ``n_saved``
    kept) and, with ``resume``, loading the last one when training starts. Why not the stock saver
    and loader: here the previous checkpoint is deleted only after the new one is complete (ignite
    deletes it first), a failed write names its file (:class:`CheckpointWriteError`), ``resume`` may
    be ``true``/``latest`` or a path and is checked against the run record, and the best-model
    saver's state (the best score so far) is saved and restored, so a resumed run continues exactly.

    Args:
        save_dir: the checkpoint folder.
        save_dict: the objects to save; the engine it is attached to (and its AMP scaler), the run record
            and the validation state are added.
        resume: ``false`` (start fresh), ``true``/``"latest"`` (the last checkpoint in ``save_dir``) or a path.
        record: the run record (:func:`run_record` settings): saved in every checkpoint and written as
            ``model.json`` beside every ``model.pt`` the best-model saver writes.
        best_model_saver: the evaluator's stock ``CheckpointSaver`` of the best model (its writes are made
            safe the same way).
        evaluator: the validation engine whose best score is saved.
        save_interval: epochs between checkpoints; 0: none (the best model and its record are still written).
        n_saved: checkpoints kept.
    """

    def __init__(self, save_dir, save_dict, resume=False, record=None, best_model_saver=None, evaluator=None,
                 save_interval: int = 1, n_saved: int = 1):
        self.resume_dict = save_dict
        self.record = run_record(record)
        if self.record is not None:
            save_dict["run_record"] = self.record
        if best_model_saver is not None:
            _make_safe(best_model_saver, self.record)
            if evaluator is not None:
                save_dict["validation"] = ValidationState(evaluator, best_model_saver)
        self.resume = resume
        self.path: Path | None = None
        super().__init__(save_dir=save_dir, save_dict=save_dict, save_interval=int(save_interval),
                         n_saved=n_saved, epoch_level=True)
        _make_safe(self)

    def attach(self, engine: Engine) -> None:
        # the engine's own state (epoch, iteration) and AMP scaler: a config cannot reference the trainer
        # from the trainer's own handler list (a circular reference)
        self.resume_dict.setdefault("trainer", engine)
        if getattr(engine, "scaler", None) is not None:
            self.resume_dict.setdefault("scaler", engine.scaler)
        from ..files import check_writable

        check_writable(self.save_dir, "checkpoint folder (ckpt_dir)")  # before training, not after its first epoch
        self.path = find_checkpoint(self.resume, self.save_dir)
        if self.path is not None:  # restored before any other handler starts
            engine.add_event_handler(Events.STARTED, self._load)
            started = engine._event_handlers[Events.STARTED]
            started.insert(0, started.pop())
        if self.save_interval > 0:
            super().attach(engine)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._remove_stale)

    def _remove_stale(self, engine: Engine) -> None:
        """Delete the ``checkpoint_epoch=K.pt`` files of the folder that this saver no longer keeps (the one
        a resumed run started from, an earlier run's), once a newer one is complete: one resume point."""
        import ignite.distributed as idist

        if idist.get_rank() != 0:  # the rank that writes them
            return
        checkpoint = getattr(self, "_interval_checkpoint", None)
        kept = {item.filename for item in getattr(checkpoint, "_saved", [])}
        if not kept or not all((Path(self.save_dir) / name).is_file() for name in kept):
            return
        for path in Path(self.save_dir).glob("checkpoint_epoch=*.pt"):
            if CHECKPOINT_PATTERN.search(path.name) and path.name not in kept:
                path.unlink(missing_ok=True)
                logger.info("removed %s: %s is the newer resume checkpoint", path, ", ".join(sorted(kept)))

    def _load(self, engine: Engine) -> None:
        from ..networks import read_checkpoint

        checkpoint = read_checkpoint(self.path)
        missing = [k for k in self.resume_dict if k not in checkpoint]
        if missing:
            raise KeyError(
                f"checkpoint {self.path} has no {missing} (it holds {sorted(checkpoint)}); is it a training "
                f"checkpoint of this bundle?"
            )
        if isinstance(self.record, RunRecord):
            self.record.check(checkpoint["run_record"], self.path)
        max_epochs = engine.state.max_epochs
        to_load = {k: v for k, v in self.resume_dict.items() if k != "run_record"}
        Checkpoint.load_objects(to_load=to_load, checkpoint={k: checkpoint[k] for k in to_load})
        if engine.state.epoch > max_epochs:
            raise ValueError(f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}")
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d (iteration %d)", self.path, engine.state.epoch, engine.state.iteration)
        print(f"resumed from {self.path}: epoch {engine.state.epoch}/{max_epochs} done", flush=True)


def find_checkpoint(resume, ckpt_dir) -> Path | None:
    """The checkpoint a ``resume`` setting points to: ``false``/empty: none; ``true``/``latest``:
    the highest-epoch ``checkpoint_epoch=K.pt`` in ``ckpt_dir``; anything else: that file."""
    if resume is None or resume is False or str(resume).strip().lower() in ("", "false", "0", "no", "none"):
        return None
    if resume is True or str(resume).strip().lower() in ("true", "1", "yes", "latest"):
        folder = Path(ckpt_dir)
        found = sorted(
            (
                (int(m.group(1)), p)
                for p in folder.glob("checkpoint_epoch=*.pt")
                if (m := CHECKPOINT_PATTERN.search(p.name))
            ),
        )
        if not found:
            raise FileNotFoundError(f"--resume: no training checkpoint (checkpoint_epoch=K.pt) in {folder.resolve()}")
        return found[-1][1]
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
    return path
