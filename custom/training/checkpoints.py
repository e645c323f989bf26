"""Checkpoints that survive crashes: safe writes, exact resume, the best model with its run record.

Three handlers of train.json, built on ignite's public ``Checkpoint`` and ``DiskSaver``:

- :class:`CheckpointLoader` (first in ``train#handlers``): with ``resume``, restores the last epoch
  checkpoint before any other handler starts: network, optimiser, learning-rate scheduler, EMA
  teacher, NVUM memory and its updater, the trainer's epoch/iteration counters, the best validation
  score so far (:class:`ValidationState`) and the AMP grad scaler;
- :class:`CheckpointSaver` (after the validation handler): ``checkpoint_epoch=K.pt`` every epoch;
- :class:`BestModelSaver` (in ``validate#handlers``): ``model.pt``, the evaluated network of the best
  validation score, and its run record ``model.json`` beside it.

The random streams are a function of ``(seed, epoch)`` (:class:`custom.EpochReseed`), so a run
killed at any point (``kill -9`` in the middle of an epoch included) and continued with
``--resume true`` ends exactly like an uninterrupted run with the same seed (tested with a real
``SIGKILL``).

Every file is written to a temporary file in its folder and renamed over the target (ignite's atomic
``DiskSaver``): a crash or a failed write never leaves a truncated file, and the previous checkpoint is
deleted only after the new one is complete. A failed write stops training with
:class:`CheckpointWriteError`, whose message names the path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from ..record import RunRecord, record_path

logger = logging.getLogger(__name__)

#: file names of the per-epoch training checkpoints (ignite's ``{name}_{score_name}={epoch}.pt``).
CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space, no permission, ...); names the path."""


def epoch_checkpoints(folder) -> list[tuple[int, Path]]:
    """The ``checkpoint_epoch=K.pt`` files of ``folder`` as ``(K, path)``, by epoch (numeric order)."""
    found = ((CHECKPOINT_PATTERN.search(p.name), p) for p in Path(folder).glob("checkpoint_epoch=*.pt"))
    return sorted((int(m.group(1)), p) for m, p in found if m)


class SafeDiskSaver(DiskSaver):
    """ignite's atomic ``DiskSaver`` whose failed write names its file, which deletes a replaced checkpoint
    only after the new one is complete, and which can write a fixed file name and a run record beside it.

    (ignite's ``Checkpoint`` asks to remove the checkpoint it replaces *before* writing the new one; here
    that removal is deferred until the write has succeeded.)

    Args:
        dirname: the folder.
        filename: a fixed file name (e.g. ``model.pt``), overwritten in place; ``None``: ignite's names.
        record: a :class:`custom.RunRecord` written as ``<name>.json`` beside every file written.
    """

    def __init__(self, dirname, filename: str | None = None, record: RunRecord | None = None):
        super().__init__(dirname, atomic=True, require_empty=False)
        self.filename, self.record = filename, record
        self.pending_removals: list[str] = []
        self.kept: list[str] = []  #: the files written and not (yet) removed, oldest first

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        import ignite.distributed as idist

        filename = self.filename or filename
        path = self.dirname / filename
        try:
            super().__call__(checkpoint, filename, metadata)
        except OSError as e:
            raise CheckpointWriteError(
                e.errno,
                f"could not write checkpoint {path}: {e.strerror or e}. Nothing was replaced: checkpoints "
                "are written to a temporary file and renamed, so the previous checkpoint in that folder is intact",
            ) from e
        # under several processes the files are written on ``save_on_rank`` only (the record follows them)
        if self.record is not None and idist.get_rank() == self.save_on_rank:
            self.record.write(record_path(path))
        pending, self.pending_removals = self.pending_removals, []
        if self.filename:  # a fixed name is overwritten in place
            self.kept = [filename]
            return
        for old in pending:
            if old != filename:
                super().remove(old)
        self.kept = [name for name in self.kept if name not in pending] + [filename]

    def remove(self, filename: str) -> None:
        self.pending_removals.append(filename)


class ValidationState:
    """The best validation score so far and the best-model saver's record of it, for resume.

    Without it a resumed run would take its first validated epoch as the best and overwrite
    ``model.pt`` even with a worse network.

    Args:
        evaluator: the validation engine (its ``state.best_metric`` / ``best_metric_epoch``).
        best_model_saver: the :class:`BestModelSaver` writing the best model.
    """

    def __init__(self, evaluator: Engine, best_model_saver: BestModelSaver | None = None):
        self.evaluator, self.best_model_saver = evaluator, best_model_saver

    def state_dict(self) -> dict:
        state = {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }
        if self.best_model_saver is not None:
            state["best_model"] = self.best_model_saver.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if self.best_model_saver is not None and "best_model" in state:
            self.best_model_saver.load_state_dict(state["best_model"])


class BestModelSaver:
    """``model.pt``: the network of the best validation score (a bare state dict), with its run record
    ``model.json`` beside it; attached to the validation engine.

    ignite's ``Checkpoint`` with the key metric as score, as MONAI's ``CheckpointSaver`` with
    ``save_key_metric`` and ``key_metric_filename`` builds it, writing through :class:`SafeDiskSaver` (atomic,
    the failed write named, the record beside the weights). Its state (the best score so far) is saved in the
    resume checkpoints through :class:`ValidationState`.

    Args:
        save_dir: the folder.
        network: the network to save (train.json's ``eval_network``: the EMA teacher when used).
        record: the run record (:class:`custom.RunRecord`) written as ``model.json``.
        filename: the weights file's name.
        key_metric_name: the metric compared; default the engine's key metric.
    """

    def __init__(self, save_dir, network, record: RunRecord | None = None, filename: str = "model.pt",
                 key_metric_name: str | None = None):
        self.save_dir, self.key_metric_name = save_dir, key_metric_name
        self.checkpoint = Checkpoint(
            {"model": network},
            save_handler=SafeDiskSaver(save_dir, filename=filename, record=record),
            filename_prefix="",
            score_function=self.score,
            score_name="key_metric",
            n_saved=1,
        )

    def score(self, engine: Engine) -> float:
        return engine.state.metrics[self.key_metric_name or engine.state.key_metric_name]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.checkpoint)

    def state_dict(self) -> dict:
        return self.checkpoint.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.checkpoint.load_state_dict(state)


def _with_engine(objects: dict, engine: Engine) -> dict:
    """``objects`` and the engine's own state (epoch, iteration) and AMP scaler: a config cannot reference the
    trainer from the trainer's own handler list (a circular reference)."""
    objects = dict(objects)
    objects.setdefault("trainer", engine)
    if getattr(engine, "scaler", None) is not None:
        objects.setdefault("scaler", engine.scaler)
    return objects


class CheckpointSaver:
    """The resume checkpoints: ``checkpoint_epoch=K.pt`` every ``save_interval`` epochs, the last ``n_saved``
    kept (older ones of the folder deleted once a newer one is complete: one resume point).

    Attach it to the trainer after the validation handler, so that each checkpoint holds that epoch's
    validation state. ignite's ``Checkpoint`` (as MONAI's ``CheckpointSaver`` with ``save_interval``),
    writing through :class:`SafeDiskSaver`.

    Args:
        save_dir: the checkpoint folder (checked writable when attached, before training).
        save_dict: the objects to save (train.json's ``checkpoint_objects``); the trainer it is attached to
            and its AMP scaler are added.
        save_interval: epochs between checkpoints; 0: none.
        n_saved: checkpoints kept.
    """

    def __init__(self, save_dir, save_dict: dict, save_interval: int = 1, n_saved: int = 1):
        self.save_dir, self.save_dict = save_dir, save_dict
        self.save_interval, self.n_saved = int(save_interval), int(n_saved)
        self.checkpoint: Checkpoint | None = None
        self.saver: SafeDiskSaver | None = None

    def attach(self, engine: Engine) -> None:
        from ..files import check_writable

        check_writable(self.save_dir, "checkpoint folder (ckpt_dir)")  # before training, not after its first epoch
        if self.save_interval <= 0:
            return
        self.saver = SafeDiskSaver(self.save_dir)
        self.checkpoint = Checkpoint(
            _with_engine(self.save_dict, engine),
            save_handler=self.saver,
            filename_prefix="",
            score_function=lambda e: e.state.epoch,
            score_name="epoch",
            n_saved=self.n_saved,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    def save(self, engine: Engine) -> None:
        self.checkpoint(engine)
        self.remove_stale()

    def remove_stale(self) -> None:
        """Delete the ``checkpoint_epoch=K.pt`` files of the folder that this saver no longer keeps (the one
        a resumed run started from, an earlier run's), once a newer one is complete: one resume point."""
        import ignite.distributed as idist

        if idist.get_rank() != 0:  # the rank that writes them
            return
        kept = set(self.saver.kept)
        if not kept or not all((Path(self.save_dir) / name).is_file() for name in kept):
            return
        for _, path in epoch_checkpoints(self.save_dir):
            if path.name not in kept:
                path.unlink(missing_ok=True)
                logger.info("removed %s: %s is the newer resume checkpoint", path, ", ".join(sorted(kept)))


class CheckpointLoader:
    """Resume: the last training checkpoint restored when training starts (first in ``train#handlers``, as
    MONAI's ``CheckpointLoader``).

    Why not the stock loader: ``resume`` may be ``true``/``latest`` (the last ``checkpoint_epoch=K.pt`` of
    ``save_dir``) or a path, the checkpoint's run record is checked against this run's (another data list
    is refused), and ``max_epochs`` stays this run's.

    Args:
        save_dir: the checkpoint folder.
        load_dict: the objects to restore (train.json's ``checkpoint_objects``); the trainer it is attached to
            and its AMP scaler are added. A :class:`custom.RunRecord` among them is checked, not loaded.
        resume: ``false`` (start fresh), ``true``/``"latest"`` or a checkpoint path.
        allow_changes: settings that may differ from the checkpoint's run (``resume_changes``: names, or ``all``);
            any other difference stops the resume, listing each (:mod:`custom.training.changes`). An accepted
            ``learning_rate`` or ``lr_milestones`` is applied to the restored optimiser and scheduler, so that the
            record says what the rest of the run uses.
    """

    def __init__(self, save_dir, load_dict: dict, resume=False, allow_changes=None):
        self.save_dir, self.load_dict, self.resume = save_dir, load_dict, resume
        self.allow_changes = allow_changes
        self.path: Path | None = None

    def attach(self, engine: Engine) -> None:
        self.path = find_checkpoint(self.resume, self.save_dir)
        if self.path is not None:
            self.load_dict = _with_engine(self.load_dict, engine)
            engine.add_event_handler(Events.STARTED, self.load)

    def load(self, engine: Engine) -> None:
        from ..networks import read_checkpoint

        checkpoint = read_checkpoint(self.path)
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            raise KeyError(
                f"checkpoint {self.path} has no {missing} (it holds {sorted(checkpoint)}); is it a training "
                f"checkpoint of this bundle?"
            )
        records = {k for k, v in self.load_dict.items() if isinstance(v, RunRecord)}
        trainer = checkpoint.get("trainer") or {}
        epoch = trainer.get("epoch") or (trainer.get("iteration", 0) // max(int(trainer.get("epoch_length") or 1), 1))
        changes = []
        for key in records:
            changes += self.load_dict[key].check(checkpoint[key], self.path, self.allow_changes, epoch)
        max_epochs = engine.state.max_epochs
        to_load = {k: v for k, v in self.load_dict.items() if k not in records}
        Checkpoint.load_objects(to_load=to_load, checkpoint={k: checkpoint[k] for k in to_load})
        apply_schedule_changes(changes, self.load_dict.get("optimizer"), self.load_dict.get("lr_scheduler"))
        if engine.state.epoch > max_epochs:
            raise ValueError(f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}")
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d (iteration %d)", self.path, engine.state.epoch, engine.state.iteration)
        print(f"resumed from {self.path}: epoch {engine.state.epoch}/{max_epochs} done", flush=True)


def apply_schedule_changes(changes, optimizer, scheduler) -> None:
    """Apply accepted ``recipe.learning_rate`` / ``recipe.lr_milestones`` changes to a restored optimiser and
    scheduler (their saved state holds the old ones): the learning rate keeps the decay already applied."""
    for key, old, new in changes:
        if key == "recipe.learning_rate" and optimizer is not None and old:
            factor = float(new) / float(old)
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor
                if "initial_lr" in group:
                    group["initial_lr"] = group["initial_lr"] * factor
            if scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        elif key == "recipe.lr_milestones" and scheduler is not None and hasattr(scheduler, "milestones"):
            from collections import Counter

            scheduler.milestones = Counter(int(m) for m in new)


def find_checkpoint(resume, ckpt_dir) -> Path | None:
    """The checkpoint a ``resume`` setting points to: ``false``/empty: none; ``true``/``latest``:
    the highest-epoch ``checkpoint_epoch=K.pt`` in ``ckpt_dir``; anything else: that file."""
    from ..flags import truth_word

    word = True if str(resume).strip().lower() == "latest" else truth_word(resume)
    if word is False:
        return None
    if word is True:
        found = epoch_checkpoints(ckpt_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume: no training checkpoint (checkpoint_epoch=K.pt) in {Path(ckpt_dir).resolve()}")
        return found[-1][1]
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
    return path
