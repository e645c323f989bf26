"""From a trained checkpoint to deployable artefacts: TorchScript export, offline bundle checks,
the deployable bundle zip, and the MLflow model (logged, registered, servable).

The deployable bundle is a folder ``<name>/`` (zipped) holding::

    configs/inference.json, configs/metadata.json   the trained network's classes and input size
    models/model.ts                                  TorchScript, metadata and inference config embedded
    docs/README.md, docs/meta_schema_20240725.json   bundle card; the metadata schema (offline checks)
    custom/                                          the Python code the configs import
    scripts/                                         the MONAI Deploy example application

``inference.json`` runs from the extracted folder with the TorchScript model alone:
``cd <name> && python -m monai.bundle run --config_file configs/inference.json --bundle_root . --input_path <images>``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Sequence

import torch

from .networks import load_weights

#: folder name of the deployable bundle (MONAI Label infers the task type "classification" from it).
BUNDLE_NAME = "nvum_cxr_classification"
#: default name of the model in the MLflow registry.
DEFAULT_MODEL_NAME = "nvum-chestxray"
#: distributions the served model needs, pinned to the installed versions.
RUNTIME_PACKAGES = ("torch", "monai", "pytorch-ignite", "mlflow", "numpy", "pandas", "pillow", "scikit-learn", "tqdm")
#: largest allowed difference between the TorchScript model's and the checkpoint's logits.
EXPORT_TOLERANCE = 1e-5
_CODE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def code_dir() -> Path:
    """The folder of the ``custom`` package (shipped in the bundle zip and with the MLflow model)."""
    return Path(__file__).resolve().parent


def default_bundle_dir() -> Path:
    """The bundle folder this code belongs to: ``<repository>/bundle``, or the extracted deployable
    bundle itself (where ``custom/`` sits next to ``configs/``)."""
    root = code_dir().parent
    for candidate in (root / "bundle", root):
        if (candidate / "configs" / "inference.json").is_file():
            return candidate
    raise FileNotFoundError(f"no bundle folder with configs/inference.json found next to {code_dir()}; pass bundle_dir")


class BundleNetwork(torch.nn.Module):
    """The inference network of a bundle, read from the first model file that exists, on first use.

    ``inference.json`` lists ``models/model.pt`` (weights for ``network_def``) and then
    ``models/model.ts`` (TorchScript), so the same config runs in the repository (after training)
    and in the deployable bundle, which ships the TorchScript model only. Loading waits for the
    first forward pass, so the config can be parsed and checked before a model exists.

    Args:
        network_def: the network architecture (used for weights files).
        model_files: candidate files in order of preference; ``.ts`` files are TorchScript.
        device: where the network runs.

    Raises:
        FileNotFoundError: (on first use) none of ``model_files`` exists; all are named.
    """

    def __init__(self, network_def: torch.nn.Module, model_files: Sequence, device="cpu"):
        super().__init__()
        self._network_def = [network_def]  # a list: not registered as a submodule until loaded
        self.model_files = [Path(p) for p in ([model_files] if isinstance(model_files, (str, Path)) else model_files)]
        self.device = device
        self.network: torch.nn.Module | None = None
        self.model_file: Path | None = None

    def load(self) -> torch.nn.Module:
        """Load (once) and return the network."""
        if self.network is None:
            found = [p for p in self.model_files if p.is_file()]
            if not found:
                raise FileNotFoundError("no model found; none of these files exists: " + ", ".join(str(p) for p in self.model_files))
            self.model_file = found[0]
            self.network = load_inference_network(self._network_def[0], self.model_file, self.device)
        return self.network

    def forward(self, *args):
        return self.load()(*args)


def load_inference_network(network_def: torch.nn.Module, path, device="cpu") -> torch.nn.Module:
    """The network to run inference with, in eval mode on ``device``.

    A ``.ts`` file is loaded as TorchScript (``network_def`` is not used); any other file is read
    as weights into ``network_def`` (keys and shapes must match, see :func:`custom.networks.load_weights`).
    """
    path = Path(path)
    if path.suffix == ".ts":
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript model not found: {path}")
        return TorchScriptRunner(torch.jit.load(str(path), map_location=device)).eval()
    return load_weights(network_def, path).to(device).eval()


class TorchScriptRunner(torch.nn.Module):
    """Calls a TorchScript module with the JIT's graph optimisation off.

    With it on, the first two calls of the DenseNet121 export each cost about 5 CPU seconds
    (profiling, then optimisation passes; measured at 32 px, batch 4); with it off the second call
    costs about a third of that. Later calls and the outputs are the same either way.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        with torch.jit.optimized_execution(False):
            return self.module(*args)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"bundle file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def bundle_configs(config_dir, classes: Sequence[str] | None = None, image_size: int | None = None) -> tuple[dict, dict]:
    """``inference.json`` and ``metadata.json`` of a bundle, set to a trained network's classes and input size.

    Args:
        config_dir: folder holding ``inference.json`` and ``metadata.json``.
        classes: class names of the network's outputs, in order (default: keep the config's).
        image_size: network input height and width (default: keep the config's).

    Returns:
        ``(inference, metadata)`` dicts; the classes also go into the metadata's output
        ``channel_def`` and ``num_channels``, the size into the input's ``spatial_shape``.
    """
    config_dir = Path(config_dir)
    inference = _read_json(config_dir / "inference.json")
    meta = _read_json(config_dir / "metadata.json")
    try:
        fmt = meta["network_data_format"]
        in_key, out_key = next(iter(fmt["inputs"])), next(iter(fmt["outputs"]))
    except (KeyError, StopIteration, TypeError):
        raise ValueError(f"{config_dir / 'metadata.json'}: 'network_data_format' needs one input and one output") from None
    for key in ("classes", "image_size"):
        if key not in inference:
            raise ValueError(f"{config_dir / 'inference.json'} has no '{key}' entry")
    inference, meta = copy.deepcopy(inference), copy.deepcopy(meta)
    if classes is not None:
        inference["classes"] = [str(c) for c in classes]
    if image_size is not None:
        inference["image_size"] = int(image_size)
    out = meta["network_data_format"]["outputs"][out_key]
    out["num_channels"] = len(inference["classes"])
    out["spatial_shape"] = [len(inference["classes"])]
    out["channel_def"] = {str(i): c for i, c in enumerate(inference["classes"])}
    meta["network_data_format"]["inputs"][in_key]["spatial_shape"] = [inference["image_size"]] * 2
    return inference, meta


def schema_file(config_dir) -> Path:
    """The local copy of the JSON schema that ``metadata.json`` names: ``<bundle>/docs/<schema file name>``."""
    config_dir = Path(config_dir)
    url = _read_json(config_dir / "metadata.json").get("schema")
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
    verify_metadata(meta_file=meta, filepath=str(schema or schema_file(config_dir)))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=inference, device="cpu")


def export_torchscript(checkpoint, output, config_dir) -> Path:
    """Export a checkpoint to TorchScript with ``monai.bundle.ckpt_export``.

    The bundle's ``metadata.json`` is embedded as the TorchScript metadata and ``inference.json``
    as the extra file ``inference.json``, as MONAI Deploy's bundle inference operator expects.

    Raises:
        FileNotFoundError, ValueError: missing checkpoint or one that does not fit ``network_def``.
    """
    from monai.bundle import ckpt_export

    config_dir, output = Path(config_dir), Path(output)
    load_weights(_network_def(config_dir), checkpoint)  # clear errors for a missing or mismatching file
    output.parent.mkdir(parents=True, exist_ok=True)
    ckpt_export(
        net_id="network_def",
        filepath=str(output),
        ckpt_file=str(checkpoint),
        meta_file=str(config_dir / "metadata.json"),
        config_file=str(config_dir / "inference.json"),
    )
    return output


def _network_def(config_dir) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(config_dir) / "inference.json"))
    return parser.get_parsed_content("network_def")


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
def torchscript_difference(model_ts, checkpoint, config_dir, images: Sequence | None = None, batch_size: int = 4, seed: int = 0) -> float:
    """Largest absolute difference between the logits of the TorchScript model and of the checkpoint.

    Args:
        images: image files to compare on (preprocessed as in ``inference.json``); default: a seeded
            random batch of ``batch_size`` normalised-image-like tensors.
    """
    net = load_weights(_network_def(config_dir), checkpoint).eval()
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


def build_bundle(checkpoint, models_dir, staging, bundle_dir=None, classes: Sequence[str] | None = None, image_size: int | None = None, name: str = BUNDLE_NAME, check_images: Sequence | None = None) -> Deployable:
    """Export, check and pack the deployable bundle.

    Steps: write the deployable configs (``classes``/``image_size`` of the trained network),
    export ``models_dir/model.ts`` with ``ckpt_export``, check it against the checkpoint
    (largest logit difference <= 1e-5 on ``check_images`` or a random batch), run MONAI's
    ``verify_metadata`` and ``verify_net_in_out`` offline, and zip the folder as
    ``models_dir/<name>.zip``.

    Args:
        checkpoint: the trained weights (``model.pt``).
        models_dir: where ``model.ts`` and ``<name>.zip`` are written.
        staging: an empty scratch folder; the unpacked bundle is assembled in ``staging/<name>``.
        bundle_dir: source bundle folder (configs/, docs/, scripts/); default :func:`default_bundle_dir`.

    Raises:
        FileNotFoundError, ValueError: missing files, mismatching weights, failed checks.
    """
    source = Path(bundle_dir) if bundle_dir else default_bundle_dir()
    folder = Path(staging) / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "configs").mkdir(parents=True)
    inference, meta = bundle_configs(source / "configs", classes, image_size)
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=4) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    (folder / "docs").mkdir()
    readme = source / "docs" / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"bundle file not found: {readme}")
    shutil.copy2(readme, folder / "docs" / "README.md")
    schema = schema_file(source / "configs")
    shutil.copy2(schema, folder / "docs" / schema.name)
    if (source / "scripts").is_dir():
        _copy_tree(source / "scripts", folder / "scripts")
    _copy_tree(code_dir(), folder / "custom")

    models_dir = Path(models_dir)
    model_ts = export_torchscript(checkpoint, models_dir / "model.ts", folder / "configs")
    diff = torchscript_difference(model_ts, checkpoint, folder / "configs", check_images)
    if not diff <= EXPORT_TOLERANCE:
        raise ValueError(f"TorchScript export {model_ts} differs from {checkpoint} by {diff:.3g} (> {EXPORT_TOLERANCE})")
    verify_bundle(folder / "configs", folder / "docs" / schema.name)
    (folder / "models").mkdir()
    shutil.copy2(model_ts, folder / "models" / "model.ts")
    archive = models_dir / f"{name}.zip"
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    tmp.replace(archive)
    return Deployable(folder, model_ts, archive, diff)


def runtime_requirements() -> list[str]:
    """``pip`` pins of the served model's dependencies, from the installed versions (local tags such as ``+cpu`` dropped)."""
    return [f"{pkg}=={importlib_metadata.version(pkg).split('+')[0]}" for pkg in RUNTIME_PACKAGES]


def log_pyfunc_model(deployable: Deployable, example_images: Sequence, registered_model_name: str | None = DEFAULT_MODEL_NAME, tracking_uri: str | None = None, run_id: str | None = None, experiment_name: str = "nvum", name: str = "model"):
    """Log the bundle as an MLflow pyfunc model (:class:`custom.serving.ChestXrayClassifier`) and register it.

    The model's artifacts are the TorchScript file and the deployable ``inference.json``; the
    ``custom`` package goes with it as ``code_paths``. The input example is the bytes of
    ``example_images`` (default: two random grey PNGs of the input size); the signature is one
    ``binary`` input column ``image`` and one ``double`` output column per class.

    Args:
        deployable: what :func:`build_bundle` returned.
        example_images: image files for the input example.
        registered_model_name: registry name; ``None`` logs without registering.
        tracking_uri: the MLflow store (default: MLflow's current one).
        run_id: log into this run (it is ended afterwards); default: a new run in ``experiment_name``.

    Returns:
        the ``ModelVersion`` (or the ``ModelInfo`` when not registering).
    """
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from .serving import IMAGE_COLUMN, ChestXrayClassifier

    inference = _read_json(deployable.config_dir / "inference.json")
    if not example_images:
        example_images = _example_pngs(deployable.folder / "examples", inference["image_size"])
    example = pd.DataFrame({IMAGE_COLUMN: [Path(p).read_bytes() for p in example_images]})
    artifacts = {"model": str(deployable.model_ts), "inference_config": str(deployable.config_dir / "inference.json")}
    signature = ModelSignature(Schema([ColSpec("binary", IMAGE_COLUMN)]), Schema([ColSpec("double", str(c)) for c in inference["classes"]]))

    with use_tracking_uri(tracking_uri or mlflow.get_tracking_uri()):
        experiment_id = None
        if run_id is None:
            experiment_id = _experiment_id(mlflow.MlflowClient(), experiment_name)
        with mlflow.start_run(run_id=run_id, experiment_id=experiment_id):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=ChestXrayClassifier(),
                artifacts=artifacts,
                code_paths=[str(deployable.folder / "custom")],
                input_example=example,
                signature=signature,
                pip_requirements=runtime_requirements(),
                registered_model_name=registered_model_name,
            )
        if not registered_model_name:
            return info
        return mlflow.MlflowClient().get_model_version(registered_model_name, str(info.registered_model_version))


@contextlib.contextmanager
def use_tracking_uri(uri: str):
    """MLflow's global tracking URI set to ``uri`` inside the block, restored afterwards.

    ``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI`` (for subprocesses); without
    the restore, a later MLflow tracker of the same process would log into this store.
    """
    import mlflow

    env_before, uri_before = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri_before if env_before is not None else None)
        if env_before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def _experiment_id(client, name: str) -> str:
    """The id of an experiment, created if needed with its artifacts next to a sqlite store (as the training does)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:///"):
        location = (Path(client.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _example_pngs(folder: Path, image_size: int, count: int = 2, seed: int = 0) -> list[Path]:
    """Seeded random grey PNGs of the network's input size: an input example when no image is given."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"example_{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (image_size, image_size), dtype=np.uint8)).save(path)
    return paths


class ModelRegistrar:
    """Final step of the training workflow: deploy the best checkpoint inside the training's MLflow run.

    With tracking on, it builds the deployable bundle (:func:`build_bundle`: ``model.ts``, checks,
    ``<name>.zip``), logs the zip as the run's artifact ``bundle/<name>.zip``, logs the pyfunc
    model as ``model`` with an input example of ``example_images``, registers it as
    ``registered_model_name`` and ends the run. With tracking off it does nothing.

    Args:
        tracker: the workflow's :class:`~custom.handlers.MLflowTracker`.
        checkpoint: the best weights (``model.pt``).
        models_dir: where ``model.ts`` and the zip are written.
        classes, image_size: the trained network's classes and input size.
        example_images: image files for the MLflow input example (the first two are used).
        registered_model_name: name in the registry; ``null``/empty logs the model unregistered.
        bundle_dir: source bundle folder (default: the repository's ``bundle/``).
        bundle_name: folder name inside the zip.
    """

    def __init__(self, tracker, checkpoint, models_dir, classes=None, image_size=None, example_images: Sequence = (), registered_model_name: str | None = DEFAULT_MODEL_NAME, bundle_dir=None, bundle_name: str = BUNDLE_NAME):
        self.tracker, self.checkpoint, self.models_dir = tracker, checkpoint, models_dir
        self.classes, self.image_size = classes, image_size
        self.example_images = list(example_images)[:2]
        self.registered_model_name = registered_model_name or None
        self.bundle_dir, self.bundle_name = bundle_dir, bundle_name
        self.version = None

    def run(self):
        """Returns the registered ``ModelVersion`` (``None`` with tracking off)."""
        if not getattr(self.tracker, "enabled", False):
            print("MLflow tracking is off: the model is neither exported nor registered", flush=True)
            return None
        self.tracker.start()
        run_id = self.tracker.run_id
        try:
            with tempfile.TemporaryDirectory() as staging:
                built = build_bundle(self.checkpoint, self.models_dir, staging, self.bundle_dir, self.classes, self.image_size, self.bundle_name, self.example_images)
                print(f"exported {built.model_ts} (largest logit difference to the checkpoint {built.max_difference:.2g}); bundle {built.zip}", flush=True)
                self.tracker.log_file(built.zip, "bundle")
                self.version = log_pyfunc_model(built, self.example_images, self.registered_model_name, self.tracker.client.tracking_uri, run_id)
        except BaseException:
            self.tracker.run_finish_status = "FAILED"  # the run ends below, marked as failed
            raise
        finally:
            self.tracker.finish()
        if self.registered_model_name:
            uri = f"models:/{self.version.name}/{self.version.version}"
            print(f"registered {uri} (run {run_id}); serve it with: MLFLOW_TRACKING_URI={self.tracker.client.tracking_uri} "
                  f"mlflow models serve -m {uri} --env-manager local -h 127.0.0.1 -p 5001", flush=True)
        return self.version


def export_command(checkpoint="bundle/models/model.pt", models_dir=None, bundle_dir=None, classes=None, image_size=None, name: str = BUNDLE_NAME) -> Deployable:
    """``python -m custom.cli export``: ``model.ts`` and the deployable zip from a checkpoint, checked; no MLflow."""
    models_dir = Path(models_dir) if models_dir else Path(checkpoint).parent
    with tempfile.TemporaryDirectory() as staging:
        built = build_bundle(checkpoint, models_dir, staging, bundle_dir, classes, image_size, name)
    print(f"TorchScript model: {built.model_ts} (largest logit difference to {checkpoint}: {built.max_difference:.2g})")
    print(f"deployable bundle: {built.zip} (metadata and network checks passed)")
    return built


def register_command(checkpoint="bundle/models/model.pt", registered_model_name: str = DEFAULT_MODEL_NAME, tracking_uri=None, experiment_name: str = "nvum", models_dir=None, bundle_dir=None, classes=None, image_size=None, example_images=None, name: str = BUNDLE_NAME):
    """``python -m custom.cli register``: export, pack, log and register a checkpoint in a new MLflow run.

    For checkpoints trained with ``--mlflow false`` (the training workflow registers its model
    itself when tracking is on). ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI`` or the
    training's store, ``sqlite:///bundle/eval/mlruns.db``.
    """
    import mlflow

    from .handlers import default_tracking_uri

    uri = tracking_uri or default_tracking_uri("bundle/eval")
    models_dir = Path(models_dir) if models_dir else Path(checkpoint).parent
    if isinstance(example_images, str):
        example_images = [example_images]
    with tempfile.TemporaryDirectory() as staging:
        built = build_bundle(checkpoint, models_dir, staging, bundle_dir, classes, image_size, name, example_images)
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run(_experiment_id(client, experiment_name), run_name=f"register_{Path(checkpoint).name}")
        try:
            client.log_artifact(run.info.run_id, str(built.zip), "bundle")
            version = log_pyfunc_model(built, example_images or (), registered_model_name, uri, run.info.run_id)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
    print(f"deployable bundle: {built.zip}; MLflow run {run.info.run_id} in {uri}")
    if registered_model_name:
        print(f"registered models:/{version.name}/{version.version}")
    return version
