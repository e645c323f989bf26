"""From a trained checkpoint to deployable artefacts: TorchScript export, offline bundle checks,
and the deployable bundle zip.

The deployable bundle is a folder ``<name>/`` (zipped) laid out as a MONAI model-zoo bundle::

    LICENSE, large_files.yml                         code licence; model files over 25 MB with sha256
    configs/                                         inference.json, metadata.json (set to the run), train.json
                                                     (trains on the user's data list), evaluate.json,
                                                     multi_gpu_train.json, logging.conf, datasets/ (see layout.py)
    models/model.pt, model.json, model.ts            weights, run record, TorchScript (configs embedded)
    docs/                                            bundle card, pages and the files they link, data_license.txt,
                                                     metadata schema
    custom/                                          the Python code the configs import (runtime part only)
    scripts/                                         MONAI Deploy application, MONAI Label app
    data_lists/                                      the data lists the dataset overlays name (where committed)

Every config runs from the extracted folder with ``bundle_root`` "." (the default) or set to the folder:
``cd <name> && python -m monai.bundle run --config_file configs/inference.json --input_path <images>``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import resolve_includes
from ..files import atomic_path, read_json, write_json
from ..networks import load_weights, network_config
from ..record import read_record, record_path
from ..serving.loaders import TorchScriptRunner
from .layout import write_configs, write_docs, write_large_files, write_licences

#: folder name of the deployable bundle (MONAI Label infers the task type "classification" from it).
BUNDLE_NAME = "nvum_cxr_classification"
#: largest allowed difference between the TorchScript model's and the checkpoint's logits.
EXPORT_TOLERANCE = 1e-5
_CODE_PATTERNS = ("__pycache__", "*.pyc", "*.pyo")
_CODE_IGNORE = shutil.ignore_patterns(*_CODE_PATTERNS)
#: the parts of ``custom`` that are not runtime code: the deployable bundle and the MLflow model leave them out.
TOOLS = ("tools", "cli.py")


@contextlib.contextmanager
def quiet_monai_scripts():
    """MONAI's bundle scripts log an input summary and an "ok" line for every call; for the calls made
    here (export, offline checks) that is noise: only their warnings and errors are shown."""
    loggers = [logging.getLogger(name) for name in ("monai.bundle.scripts", "monai.apps.utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def code_dir() -> Path:
    """The folder of the ``custom`` package (shipped in the bundle zip and with the MLflow model)."""
    return Path(__file__).resolve().parents[1]


def default_bundle_dir() -> Path:
    """The bundle folder this code belongs to: ``<repository>/bundle``, or the extracted deployable
    bundle itself (where ``custom/`` sits next to ``configs/``)."""
    root = code_dir().parent
    for candidate in (root / "bundle", root):
        if (candidate / "configs" / "inference.json").is_file():
            return candidate
    raise FileNotFoundError(f"no bundle folder with configs/inference.json found next to {code_dir()}; pass bundle_dir")


def checkpoint_record(checkpoint, classes=None, image_size=None) -> dict:
    """What a checkpoint was trained on: the run record beside it (``model.json``, written by training;
    ``{}`` without one), with ``classes``/``image_size`` (given on the command line, for weights files
    that come without a record) taking precedence. Only the record file is read, not the weights."""
    record = dict(read_record(record_path(checkpoint)) or {}) if record_path(checkpoint).is_file() else {}
    if classes:
        record["classes"] = [classes] if isinstance(classes, str) else list(classes)
    if image_size:
        record["image_size"] = int(image_size)
    return record


def bundle_configs(config_dir, record: dict | None = None) -> tuple[dict, dict]:
    """``inference.json`` and ``metadata.json`` of the deployable bundle, set to what a run trained.

    Args:
        config_dir: folder holding ``inference.json`` and ``metadata.json``; ``%`` macros of
            ``inference.json`` are resolved relative to the folder above the bundle folder.
        record: the run's record (:class:`custom.record.RunRecord`): its ``classes``,
            ``image_size`` and ``network`` replace the config's (default: keep the config's), and
            its operating ``thresholds`` (written after training, :class:`custom.OperatingThresholds`) become
            ``thresholds`` (and their ``threshold_notes``: the classes whose threshold is a default).

    Returns:
        ``(inference, metadata)`` dicts; the classes also go into the metadata's output
        ``channel_def`` and ``num_channels``, the size into the input's ``spatial_shape``.
    """
    config_dir = Path(config_dir)
    inference = resolve_includes(read_json(config_dir / "inference.json", "bundle config"), config_dir.parent.parent)
    meta = copy.deepcopy(read_json(config_dir / "metadata.json", "bundle metadata"))
    try:
        fmt = meta["network_data_format"]
        in_key, out_key = next(iter(fmt["inputs"])), next(iter(fmt["outputs"]))
    except (KeyError, StopIteration, TypeError):
        raise ValueError(f"{config_dir / 'metadata.json'}: 'network_data_format' needs one input and one output"
                         ) from None
    for key in ("classes", "image_size", "network_def"):
        if key not in inference:
            raise ValueError(f"{config_dir / 'inference.json'} has no '{key}' entry")
    record = record or {}
    if record.get("classes") is not None:
        inference["classes"] = [str(c) for c in record["classes"]]
    if record.get("image_size") is not None:
        inference["image_size"] = int(record["image_size"])
    network_def = network_config(record.get("network"))  # None: a record naming only a class keeps the config's
    if network_def:
        inference["network_def"] = network_def
    if record.get("thresholds"):  # the run's operating thresholds, read by inference and the served model
        inference["thresholds"] = {str(k): float(v) for k, v in record["thresholds"].items()}
        if record.get("threshold_notes"):  # the classes whose threshold is a default, named where it is used
            inference["threshold_notes"] = {str(k): str(v) for k, v in record["threshold_notes"].items()}
    from ..evaluation.operating import threshold_lines

    for line in threshold_lines(inference.get("thresholds"), notes=record.get("threshold_notes"),
                                what="decisions in the exported bundle"):
        print(line.replace("the settings", "the run record"), flush=True)
    out = meta["network_data_format"]["outputs"][out_key]
    out["num_channels"] = len(inference["classes"])
    out["spatial_shape"] = [len(inference["classes"])]
    out["channel_def"] = {str(i): c for i, c in enumerate(inference["classes"])}
    meta["network_data_format"]["inputs"][in_key]["spatial_shape"] = [inference["image_size"]] * 2
    return inference, meta


def schema_file(config_dir) -> Path:
    """The local copy of the JSON schema that ``metadata.json`` names: ``<bundle>/docs/<schema file name>``."""
    config_dir = Path(config_dir)
    url = read_json(config_dir / "metadata.json", "bundle metadata").get("schema")
    if not url:
        raise ValueError(f"{config_dir / 'metadata.json'} has no 'schema' entry")
    path = config_dir.parent / "docs" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise FileNotFoundError(f"metadata schema not found: {path} (a copy of {url})")
    return path


def verify_bundle(config_dir, schema=None) -> None:
    """MONAI's ``verify_metadata`` (against the local schema copy, no download) and
    ``verify_net_in_out`` (the network's output channels and dtype against the metadata).

    Raises:
        ValueError: the metadata does not follow the schema, or the network does not match it.
    """
    from monai.bundle import verify_metadata, verify_net_in_out

    config_dir = Path(config_dir)
    meta, inference = str(config_dir / "metadata.json"), str(config_dir / "inference.json")
    with quiet_monai_scripts():
        verify_metadata(meta_file=meta, filepath=str(schema or schema_file(config_dir)))
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=inference, device="cpu")


def export_torchscript(checkpoint, output, config_dir, network: torch.nn.Module | None = None) -> Path:
    """Export a checkpoint to TorchScript with ``monai.bundle.ckpt_export``.

    The bundle's ``metadata.json`` is embedded as the TorchScript metadata and ``inference.json``
    as the extra file ``inference.json``, as MONAI Deploy's bundle inference operator expects.

    Args:
        network: ``network_def`` with the checkpoint's weights already loaded (by the caller, which
            has checked them); default: load them here to check them first.

    Raises:
        FileNotFoundError, ValueError: missing checkpoint or one that does not fit ``network_def``.
    """
    from monai.bundle import ckpt_export

    config_dir, output = Path(config_dir), Path(output)
    if network is None:
        checked_network(checkpoint, config_dir)  # clear errors for a missing or mismatching file
    output.parent.mkdir(parents=True, exist_ok=True)
    with quiet_monai_scripts():
        ckpt_export(
            net_id="network_def",
            filepath=str(output),
            ckpt_file=str(checkpoint),
            meta_file=str(config_dir / "metadata.json"),
            config_file=str(config_dir / "inference.json"),
        )
    return output


def copy_gate(checkpoint, models_dir) -> Path | None:
    """Copy the out-of-distribution gate beside ``checkpoint`` (``model.ood.npz``,
    :func:`custom.evaluation.ood.ood_path`) into ``models_dir`` as the gate of its ``model.pt``; ``None`` without."""
    from ..evaluation.ood import ood_path

    source = ood_path(checkpoint)
    if not source.is_file():
        return None
    target = ood_path(Path(models_dir) / "model.pt")
    shutil.copy2(source, target)
    return target


def _network_def(config_dir) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(config_dir) / "inference.json"))
    return parser.get_parsed_content("network_def")


def checked_network(checkpoint, config_dir) -> torch.nn.Module:
    """``network_def`` of ``config_dir/inference.json`` with the checkpoint's weights, in eval mode; errors
    name a missing checkpoint or the keys and shapes that do not fit (:func:`custom.networks.load_weights`)."""
    return load_weights(_network_def(config_dir), checkpoint).eval()


def _inputs(config_dir, images: Sequence | None, batch_size: int, seed: int) -> torch.Tensor:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(config_dir) / "inference.json"))
    if images:
        pre = parser.get_parsed_content("preprocessing")
        return torch.stack([torch.as_tensor(pre({"image": str(p)})["image"]) for p in images]).float()
    size = int(parser.get_parsed_content("image_size"))
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def torchscript_difference(model_ts, checkpoint, config_dir, images: Sequence | None = None, batch_size: int = 4,
                           seed: int = 0, network: torch.nn.Module | None = None) -> float:
    """Largest absolute difference between the logits of the TorchScript model and of the checkpoint.

    Args:
        images: image files to compare on (preprocessed as in ``inference.json``); default: a seeded
            random batch of ``batch_size`` normalised-image-like tensors.
        network: the checkpoint already loaded (:func:`checked_network`); default: load it here.
    """
    net = network.eval() if network is not None else checked_network(checkpoint, config_dir)
    ts = TorchScriptRunner(torch.jit.load(str(model_ts), map_location="cpu")).eval()
    x = _inputs(config_dir, images, batch_size, seed)
    return float((net(x) - ts(x)).abs().max())


@dataclass
class Deployable:
    """Paths of what :func:`build_bundle` wrote."""

    folder: Path  #: the unpacked deployable bundle
    model_ts: Path  #: the TorchScript model (also in ``folder/models``)
    zip: Path  #: the zipped bundle
    max_difference: float  #: TorchScript against checkpoint, largest absolute logit difference

    @property
    def config_dir(self) -> Path:
        return self.folder / "configs"


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=_CODE_IGNORE, dirs_exist_ok=True)


def build_bundle(checkpoint, models_dir, staging, bundle_dir=None, record: dict | None = None, name: str = BUNDLE_NAME,
                 check_images: Sequence | None = None, eval_metrics: dict | None = None,
                 weights_url: str | None = None) -> Deployable:
    """Export, check and pack the deployable bundle.

    Steps: write the deployable configs (the classes, input size and network of the run; see
    :mod:`custom.deploy.layout`), the licences, docs, code and scripts; export
    ``models_dir/model.ts`` with ``ckpt_export``, check it against the checkpoint (largest logit
    difference <= 1e-5 on ``check_images`` or a random batch), run MONAI's ``verify_metadata`` and
    ``verify_net_in_out`` offline; put ``model.pt`` (with its run record ``model.json``) and
    ``model.ts`` into ``models/``, list those over 25 MB in ``large_files.yml`` (sha256), and zip
    the folder as ``models_dir/<name>.zip``.

    Args:
        checkpoint: the trained weights (``model.pt``).
        models_dir: where ``model.ts`` and ``<name>.zip`` are written.
        staging: an empty scratch folder; the unpacked bundle is assembled in ``staging/<name>``.
        bundle_dir: source bundle folder (configs/, docs/, scripts/, LICENSE); default :func:`default_bundle_dir`.
        record: what the run trained (classes, image size, network); default: the record written
            beside the checkpoint (``model.json``, :func:`checkpoint_record`), else the configs' own settings.
        eval_metrics: the metadata's ``eval_metrics`` for this model (e.g. its test AUCs); default:
            the source metadata's (the figures of the default run).
        weights_url: where the model files will be published (``large_files.yml``'s urls); default: empty.

    Raises:
        FileNotFoundError, ValueError: missing files, mismatching weights, failed checks.
    """
    source = Path(bundle_dir) if bundle_dir else default_bundle_dir()
    if record is None:
        record = checkpoint_record(checkpoint)
    folder = Path(staging) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    inference, meta = bundle_configs(source / "configs", record)
    if eval_metrics:
        meta["eval_metrics"] = {str(k): float(v) for k, v in eval_metrics.items()}
    write_configs(source, folder, inference, meta, record)
    write_licences(source, folder)
    write_docs(source, folder)  # the bundle card, the pages it links and the files they link
    schema = schema_file(source / "configs")
    shutil.copy2(schema, folder / "docs" / schema.name)
    if (source / "scripts").is_dir():
        _copy_tree(source / "scripts", folder / "scripts")
    shutil.copytree(code_dir(), folder / "custom", ignore=shutil.ignore_patterns(*_CODE_PATTERNS, *TOOLS))

    models_dir = Path(models_dir)
    network = checked_network(checkpoint, folder / "configs")  # the weights, read once for the export and its check
    model_ts = export_torchscript(checkpoint, models_dir / "model.ts", folder / "configs", network)
    diff = torchscript_difference(model_ts, checkpoint, folder / "configs", check_images, network=network)
    if not diff <= EXPORT_TOLERANCE:
        raise ValueError(f"TorchScript export {model_ts} differs from {checkpoint} by {diff:.3g} "
                         f"(> {EXPORT_TOLERANCE})")
    verify_bundle(folder / "configs", folder / "docs" / schema.name)
    (folder / "models").mkdir()
    shutil.copy2(checkpoint, folder / "models" / "model.pt")
    if record:
        write_json(record, record_path(folder / "models" / "model.pt"))
    shutil.copy2(model_ts, folder / "models" / "model.ts")
    copy_gate(checkpoint, folder / "models")
    write_large_files(folder, weights_url)
    archive = models_dir / f"{name}.zip"
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return Deployable(folder, model_ts, archive, diff)
