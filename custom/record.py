"""The run record: what a run trained and how, written beside its weights and read back by resume,
export, registration, inference and the audit.

:class:`RunRecord` is written into every checkpoint (``run_record``) and beside ``model.pt`` as
``model.json``; :func:`read_record` reads it back from either; :func:`plain_json` turns config
values into plain JSON types.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .data.datalist import DataListError
from .files import plain_json  # noqa: F401  (re-exported: the record's values are plain JSON)

logger = logging.getLogger(__name__)


class RunRecord:
    """What a run trained and how: written into every checkpoint, beside ``model.pt`` as
    ``model.json``, and logged as the MLflow parameters.

    Whoever uses a checkpoint later reads it instead of being told: the audit (memory momentum,
    ``unbiased``, image size, network, data list), export and inference (classes, image size,
    network), and a resumed run, which is refused when the data list has other classes or another
    size than the memory's rows.

    train.json builds it once (``run_record``) for the checkpoints, ``model.json``, MLflow and the
    registration.

    Args:
        classes: the data list's class names (the network's outputs, in order); default the data list's.
        num_training: the number of training images (the memory's rows); default the data list's.
        datalist: the data list trained on (a ``DataList``-like object with ``path``, ``dataset_dir``,
            ``classes`` and a length, or a path).
        image_size: the network's input height and width.
        network: the ``network_def`` config, or the network (:func:`custom.networks.network_record` says what
            is kept); :func:`custom.networks.rebuild_network` builds it again.
        nvum: the method's settings (train.json's ``nvum`` group).
        recipe: other settings worth recording (learning rate, batch size, epochs, seed, ...).
    """

    def __init__(self, classes=None, num_training: int | None = None, datalist=None, image_size: int | None = None,
                 network=None, nvum: dict | None = None, recipe: dict | None = None):
        self.training_items = training_items_hash(datalist)
        self.resumed: list[dict] = []
        if classes is None:
            classes = getattr(datalist, "classes", None) or []
        if num_training is None:
            num_training = len(datalist) if hasattr(datalist, "classes") else 0  # a DataList: its training images
        self.classes, self.num_training = [str(c) for c in classes], int(num_training)
        self.datalist = str(getattr(datalist, "path", datalist)) if datalist is not None else None
        dataset_dir = getattr(datalist, "dataset_dir", None)
        self.dataset_dir = str(dataset_dir) if dataset_dir is not None else None
        self.image_size = int(image_size) if image_size is not None else None
        from .networks import network_record

        self.network = network_record(network)
        self.nvum = plain_json(dict(nvum or {}))
        self.recipe = plain_json(dict(recipe or {}))

    def state_dict(self) -> dict:
        state = {
            "classes": self.classes, "num_training": self.num_training, "datalist": self.datalist,
            "dataset_dir": self.dataset_dir, "training_items": self.training_items, "image_size": self.image_size,
            "network": self.network, "nvum": self.nvum, "recipe": self.recipe,
        }
        if self.resumed:
            state["resumed"] = self.resumed
        return state

    def params(self) -> dict:
        """The MLflow parameters of the run: the method's settings, the recipe, the data and the input size."""
        out = {**self.nvum, **self.recipe, "datalist": self.datalist, "image_size": self.image_size}
        if self.network:
            out["network"] = self.network.get("name") or self.network.get("class") or self.network.get("_target_")
        return out

    def write(self, path) -> Path:
        """Write the record as JSON (atomically: a temporary file renamed over ``path``)."""
        from .files import write_json

        return write_json(self.state_dict(), path)

    def check(self, state: dict, path, allow_changes=None, epoch: int | None = None) -> list:
        """Check that this run may continue the run of checkpoint ``path`` (its record ``state``): the same classes
        and training images (:class:`~custom.data.DataListError` otherwise), and no other change of the experiment's
        settings than ``allow_changes`` accepts (:class:`ResumeChangedError` listing each difference otherwise,
        :mod:`custom.training.changes`). Accepted changes are added to this record's ``resumed`` history (with the
        ``epoch`` they take effect after) and returned as ``(setting, old, new)``."""
        from .training.changes import accepted, changes_message, record_changes

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
        ok, refused = accepted(record_changes(state, self.state_dict()), allow_changes)
        if refused:
            raise ResumeChangedError(changes_message(path, refused))
        self.resumed = list(state.get("resumed") or [])
        if ok:
            self.resumed.append({"checkpoint": str(path), "after_epoch": epoch,
                                 "changes": {key: {"before": old, "after": new} for key, old, new in ok}})
            logger.warning("resuming %s with accepted changes: %s", path,
                           ", ".join(f"{k} {o!r} -> {n!r}" for k, o, n in ok))
        return ok

    def load_state_dict(self, state: dict) -> None:
        self.check(state, "being loaded")


class ResumeChangedError(ValueError):
    """A resume whose settings differ from the checkpoint's run; the message lists each difference and the override."""


def training_items_hash(datalist) -> str | None:
    """A short hash of the training split's content in order (each image's path and labels): each image owns a row
    of the NVUM memory, so a reordered or edited list is another experiment. ``None`` without a data list."""
    import hashlib

    raw_items = getattr(datalist, "raw_items", None)
    if raw_items is None:
        return None
    digest = hashlib.sha256()
    for item in raw_items("training"):
        digest.update(f"{item['image']}\t{[float(v) for v in item['label']]}\n".encode())
    return digest.hexdigest()[:16]


def record_path(weights) -> Path:
    """The run record file written beside a weights file: ``model.pt`` -> ``model.json``. The one place that
    derives it."""
    return Path(weights).with_suffix(".json")


def read_record(checkpoint) -> dict | None:
    """The :class:`RunRecord` of a checkpoint: ``run_record`` inside a resume checkpoint, or the
    ``<name>.json`` written beside a weights file such as ``model.pt`` (or that ``.json`` file itself);
    ``None`` when there is none."""
    from .files import read_json

    path = Path(checkpoint)
    sidecar = path if path.suffix == ".json" else record_path(path)
    if sidecar.is_file():
        return read_json(sidecar, "run record")
    if path.suffix == ".json":
        return None
    from .networks import read_checkpoint

    ckpt = read_checkpoint(path)
    return ckpt.get("run_record") if isinstance(ckpt, dict) else None


def update_record(weights, **fields) -> Path:
    """Add or replace top-level ``fields`` (e.g. the operating thresholds chosen after training) in the run
    record beside ``weights`` (or in that ``.json`` file), keeping everything else; written atomically."""
    from .files import write_json

    path = Path(weights)
    path = path if path.suffix == ".json" else record_path(path)
    content = dict(read_record(path) or {})
    content.update(plain_json(fields))
    return write_json(content, path)
