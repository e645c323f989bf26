"""Checkpoints that survive crashes: safe writes, exact resume, per-epoch random seeds.

A training run can be stopped at any point (``kill -9`` in the middle of an epoch included) and
continued with ``--resume true``: it restarts from the last epoch checkpoint with the network,
optimiser, learning-rate scheduler, EMA teacher, NVUM memory (and the logits the memory updater
had collected), the trainer's epoch/iteration counters, the best validation score so far and the
AMP grad scaler restored. The random streams are made a function of ``(seed, epoch)``: every
random number generator (torch, numpy, python, and the random transforms of the training
pipeline) is reseeded at the start of every epoch by :class:`EpochSeeder`, so the resumed epoch
draws exactly the same shuffling, augmentation and memory mixing as the uninterrupted run would
have. The final memory and validation AUC of a resumed run therefore equal those of an
uninterrupted run with the same seed (tested with a real ``SIGKILL``).

Every checkpoint is written to a temporary file in its folder and renamed over the target
(ignite's atomic ``DiskSaver``): a crash or a failed write never leaves a truncated checkpoint,
and the previous checkpoint is deleted only after the new one is complete. A failed write stops
training with :class:`CheckpointWriteError`, whose message names the path.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from ..data.datalist import DataListError

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


def run_record(record):
    """A :class:`RunRecord` from train.json's ``run_record`` settings (a dict of ``datalist``, ``image_size``,
    ``network``, ``nvum``, ``recipe``; the classes and the number of training images come from the data
    list), or the record itself; ``None`` stays ``None``."""
    if record is None or isinstance(record, RunRecord):
        return record
    settings = dict(record)
    datalist = settings.get("datalist")
    settings.setdefault("classes", getattr(datalist, "classes", None) or [])
    settings.setdefault("num_training", len(datalist) if datalist is not None else 0)
    return RunRecord(**settings)


class CheckpointSaver(_MonaiCheckpointSaver):
    """The run's checkpoints: one per epoch for resume, and the run record beside the best model.

    MONAI's ``CheckpointSaver`` (ignite's atomic writes) attached to the trainer, saving
    ``save_dict`` every ``save_interval`` epochs (``checkpoint_epoch=K.pt``, the last ``n_saved``
    kept) and, with ``resume``, loading the last one when training starts. Why not the stock saver
    and loader: here the previous checkpoint is deleted only after the new one is complete (ignite
    deletes it first), a failed write names its file (:class:`CheckpointWriteError`), ``resume`` may
    be ``true``/``latest`` or a path and is checked against the run record, and the best-model
    saver's state (the best score so far) is saved and restored, so a resumed run continues exactly.

    Args:
        save_dir: the checkpoint folder.
        save_dict: the objects to save (the trainer adds itself and its AMP scaler, see
            :class:`custom.NVUMTrainer`; the run record and the validation state are added here).
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
        self.path = find_checkpoint(self.resume, self.save_dir)
        if self.path is not None:
            engine.add_event_handler(Events.STARTED, self._load)
        if self.save_interval > 0:
            super().attach(engine)

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


class RunRecord:
    """What a run trained and how: written into every checkpoint, beside ``model.pt`` as
    ``model.json``, and logged as the MLflow parameters.

    Whoever uses a checkpoint later reads it instead of being told: the audit (memory momentum,
    ``unbiased``, image size, network, data list), export and inference (classes, image size,
    network), and a resumed run, which is refused when the data list has other classes or another
    size than the memory's rows.

    Args:
        classes: the data list's class names (the network's outputs, in order).
        num_training: the number of training images (the memory's rows).
        datalist: the data list trained on (a ``DataList``-like object with ``path`` and
            ``dataset_dir``, or a path).
        image_size: the network's input height and width.
        network: the trained network; its definition is recorded when it was built by
            :func:`custom.networks.build_network`.
        nvum: the method's settings (train.json's ``nvum`` group).
        recipe: other settings worth recording (learning rate, batch size, epochs, seed, ...).
    """

    def __init__(self, classes, num_training: int, datalist=None, image_size: int | None = None, network=None,
                 nvum: dict | None = None, recipe: dict | None = None):
        self.classes, self.num_training = [str(c) for c in classes], int(num_training)
        self.datalist = str(getattr(datalist, "path", datalist)) if datalist is not None else None
        dataset_dir = getattr(datalist, "dataset_dir", None)
        self.dataset_dir = str(dataset_dir) if dataset_dir is not None else None
        self.image_size = int(image_size) if image_size is not None else None
        architecture = getattr(network, "architecture", None)
        self.network = dict(architecture) if isinstance(architecture, dict) else None
        self.nvum = _plain(dict(nvum or {}))
        self.recipe = _plain(dict(recipe or {}))

    def state_dict(self) -> dict:
        return {
            "classes": self.classes, "num_training": self.num_training, "datalist": self.datalist,
            "dataset_dir": self.dataset_dir, "image_size": self.image_size, "network": self.network,
            "nvum": self.nvum, "recipe": self.recipe,
        }

    def params(self) -> dict:
        """The MLflow parameters of the run: the method's settings, the recipe, the data and the input size."""
        out = {**self.nvum, **self.recipe, "datalist": self.datalist, "image_size": self.image_size}
        if self.network:
            out["network"] = self.network.get("name")
        return out

    def write(self, path) -> Path:
        """Write the record as JSON (atomically: a temporary file renamed over ``path``)."""
        from ..files import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.state_dict(), indent=1) + "\n")
        return path

    def check(self, state: dict, path) -> None:
        """Raise :class:`~custom.data.DataListError` when ``state`` (from checkpoint ``path``) does not match."""
        if list(state["classes"]) != self.classes:
            unknown = [c for c in self.classes if c not in state["classes"]]
            missing = [c for c in state["classes"] if c not in self.classes]
            raise DataListError(
                f"checkpoint {path} was trained on classes {list(state['classes'])}, but the data list {self.datalist} "
                f"has {self.classes} (unknown to the checkpoint: {unknown}; missing: {missing}); resume with the data "
                "list it was trained on"
            )
        if int(state["num_training"]) != self.num_training:
            raise DataListError(
                f"checkpoint {path} holds an NVUM memory of {state['num_training']} training images (data list "
                f"{state['datalist']}), but the data list {self.datalist} has {self.num_training}; the memory rows "
                "would not match the images: resume with the data list it was trained on, or start a new run"
            )
        seed, own = (state.get("recipe") or {}).get("seed"), self.recipe.get("seed")
        if seed is not None and own is not None and seed != own:
            logger.warning("resuming a run trained with seed %s under seed %s: the rest of the run will not match an "
                           "uninterrupted run", seed, own)

    def load_state_dict(self, state: dict) -> None:
        self.check(state, "being loaded")


def _plain(value):
    """A config value as plain JSON types (tuples as lists; anything else as text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def read_record(checkpoint) -> dict | None:
    """The :class:`RunRecord` of a checkpoint: ``run_record`` inside a resume checkpoint, or the
    ``<name>.json`` written beside a weights file such as ``model.pt``; ``None`` when there is none."""
    path = Path(checkpoint)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"run record {sidecar} is not valid JSON: {e}") from None
    from ..networks import read_checkpoint

    ckpt = read_checkpoint(path)
    return ckpt.get("run_record") if isinstance(ckpt, dict) else None


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
