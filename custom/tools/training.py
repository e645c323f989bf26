"""Training through the bundle from code: the one way the tools (audit, benchmarks) run ``train.json``.

Every tool that trains does it through the bundle's own ``bundle/configs/train.json``, read with
MONAI's ``ConfigParser`` and changed only by overrides of its ids, so a benchmark measures exactly
what ``python -m monai.bundle run training`` trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

#: the bundle's configs (the tools train and evaluate through them).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "bundle" / "configs"
TRAIN_CONFIG = CONFIG_DIR / "train.json"


def train_parser(overrides: dict | None = None, config_file=TRAIN_CONFIG):
    """``train.json`` (or a list of config files, merged in order) read with MONAI's ``ConfigParser``,
    with ``overrides`` (config id -> value) applied as on the command line.

    A ``%file::id`` include of a user's overlay is resolved relative to the repository, so this works from any
    working directory.
    """
    from monai.bundle import ConfigParser

    from ..config import resolve_includes

    files = [str(f) for f in config_file] if isinstance(config_file, (list, tuple)) else [str(config_file)]
    parser = ConfigParser(resolve_includes(ConfigParser.load_config_files(files), CONFIG_DIR.parents[1]))
    parser.update(dict(overrides or {}))
    return parser


def bundle_network(num_classes: int, overrides: dict | None = None):
    """The network ``train.json`` trains (its ``network_def``), with ``num_classes`` outputs, untrained."""
    return train_parser({"num_classes": int(num_classes), **dict(overrides or {})}).get_parsed_content("network_def")


@dataclasses.dataclass
class TrainedRun:
    """What :func:`train_through_bundle` returns."""

    parser: object  #: the ``ConfigParser`` the run was built from (its objects are the trained ones)
    trainer: object  #: the ignite engine, after ``run()``
    datalist: object  #: the data list trained on
    ckpt_dir: Path  #: where ``model.pt`` and the resume checkpoints were written


def train_through_bundle(overrides: dict | None = None, *, bundle_root, quiet: bool = False,
                         resume_checkpoints: bool = True, extra_handlers: Iterable = (), config_file=TRAIN_CONFIG,
                         before_run=None) -> TrainedRun:
    """Train ``train.json`` (with ``overrides``) into ``bundle_root``: the trainer only, without the
    final test, export and registration, and with MLflow off unless ``overrides`` turn it on.

    Args:
        overrides: config ids and values, e.g. ``{"max_epochs": 3, "datalist#noise": "symmetric:0.2"}``.
        bundle_root: the run's folder (``models/`` and ``eval/`` are written there).
        quiet: leave out the per-iteration progress bar and the per-epoch line.
        resume_checkpoints: keep the per-epoch resume checkpoint (``checkpoint_epoch=K.pt``, the
            whole training state: about 90 MB written per epoch for DenseNet121).
        extra_handlers: more handlers, attached to the trainer after the config's own.
        before_run: called as ``before_run(parser, trainer)`` after the objects are built and the
            extra handlers attached, before training starts (e.g. to attach a handler that needs
            the evaluator).

    Everything is seeded as ``monai.bundle run`` seeds it (``monai.utils.set_determinism`` with the
    config's ``seed`` before any object is built); determinism is reset afterwards.
    """
    from monai.utils import set_determinism

    from ignite.handlers import ProgressBar
    from monai.handlers import StatsHandler

    from ..training import CheckpointSaver

    parser = train_parser({"bundle_root": str(bundle_root), "mlflow": False, "test_and_deploy": False,
                           **dict(overrides or {})}, config_file)
    if quiet:
        parser["train#handlers"] = [h for h in parser["train#handlers"]
                                    if not _builds(parser, h, (ProgressBar, StatsHandler))]
        parser["validate#handlers"] = [h for h in parser["validate#handlers"]
                                       if not _builds(parser, h, (StatsHandler,))]
    if not resume_checkpoints:
        for handler in parser["train#handlers"]:
            if _builds(parser, handler, (CheckpointSaver,)):
                handler["save_interval"] = 0
    set_determinism(seed=int(parser.get_parsed_content("seed")))
    try:
        datalist = parser.get_parsed_content("data")
        trainer = parser.get_parsed_content("train#trainer")
        for handler in extra_handlers:
            handler.attach(trainer)
        if before_run is not None:
            before_run(parser, trainer)
        trainer.run()
    finally:
        set_determinism(seed=None)
    return TrainedRun(parser, trainer, datalist, Path(parser.get_parsed_content("ckpt_dir")))


def _builds(parser, entry, classes: tuple) -> bool:
    """Whether a raw config entry (a ``_target_`` dict) builds an instance of one of ``classes``."""
    import pydoc

    from monai.bundle import ConfigComponent

    if not ConfigComponent.is_instantiable(entry):
        return False
    target = pydoc.locate(ConfigComponent(entry, locator=parser.locator).resolve_module_name())
    return isinstance(target, type) and issubclass(target, classes)
