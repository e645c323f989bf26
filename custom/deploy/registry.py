"""The trained model in MLflow: the pyfunc model logged with the deployable bundle, registered, servable."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Sequence

from .export import BUNDLE_NAME, Deployable, build_bundle
from ..files import read_json

#: default name of the model in the MLflow registry.
DEFAULT_MODEL_NAME = "nvum-chestxray"
#: distributions the served model needs, pinned to the installed versions.
RUNTIME_PACKAGES = ("torch", "monai", "pytorch-ignite", "mlflow", "numpy", "pandas", "pillow", "scikit-learn", "tqdm",
                    "pydicom")


def runtime_requirements() -> list[str]:
    """``pip`` pins of the served model's dependencies, from the installed versions (local tags such as
    ``+cpu`` dropped)."""
    return [f"{pkg}=={importlib_metadata.version(pkg).split('+')[0]}" for pkg in RUNTIME_PACKAGES]


def log_pyfunc_model(deployable: Deployable, example_images: Sequence,
                     registered_model_name: str | None = DEFAULT_MODEL_NAME, tracking_uri: str | None = None,
                     run_id: str | None = None, experiment_name: str = "nvum", name: str = "model"):
    """Log the bundle as an MLflow pyfunc model (:class:`custom.serving.pyfunc.ChestXrayClassifier`) and register it.

    The model's artifacts are the TorchScript file and the deployable ``inference.json``; the
    ``custom`` package goes with it as ``code_paths``. The input example is the bytes of
    ``example_images`` (default: two random grey PNGs of the input size); the signature is one
    ``string`` input column ``image`` (image bytes, base64-encoded over REST) and one ``double``
    output column per class, then, when ``inference.json`` holds operating ``thresholds``, one ``long``
    column ``<class>_positive`` per class.

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
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from ..evaluation.ood import ood_path

    from ..serving.pyfunc import IMAGE_COLUMN, POSITIVE_SUFFIX, WARNING_COLUMN, ChestXrayClassifier

    inference = read_json(deployable.config_dir / "inference.json", "bundle config")
    if not example_images:
        example_images = _example_pngs(deployable.folder / "examples", inference["image_size"])
    example = pd.DataFrame({IMAGE_COLUMN: [Path(p).read_bytes() for p in example_images]})
    artifacts = {"model": str(deployable.model_ts), "inference_config": str(deployable.config_dir / "inference.json")}
    gate = ood_path(deployable.folder / "models" / "model.pt")
    if gate.is_file():  # the out-of-distribution gate (custom.evaluation.ood), applied by the served model
        artifacts["ood"] = str(gate)
    # a string column: the model decodes the base64 text itself and says what is wrong with it (custom.serving.pyfunc)
    outputs = [ColSpec("double", str(c)) for c in inference["classes"]]
    if inference.get("thresholds"):  # the decisions at the operating thresholds follow the probabilities
        outputs += [ColSpec("long", f"{c}{POSITIVE_SUFFIX}") for c in inference["classes"]]
    outputs.append(ColSpec("string", WARNING_COLUMN, required=False))  # only when a row is degenerate
    # ood: "refuse" (a bad request for an image unlike the training images) or "flag" (columns instead);
    # degenerate_images: "warn" (the column above) or "refuse" (a bad request), by default inference.json's setting
    params = [ParamSpec("ood", "string", "refuse"),
              ParamSpec("degenerate_images", "string", inference.get("degenerate_images", "warn"))]
    signature = ModelSignature(Schema([ColSpec("string", IMAGE_COLUMN)]), Schema(outputs), params=ParamSchema(params))

    with use_tracking_uri(tracking_uri or mlflow.get_tracking_uri()):
        experiment_id = None
        if run_id is None:
            experiment_id = get_or_create_experiment(mlflow.MlflowClient(), experiment_name)
        with mlflow.start_run(run_id=run_id, experiment_id=experiment_id), quiet_mlflow_logging():
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


def register_checkpoint(checkpoint, models_dir, record: dict | None, tracking_uri: str,
                        registered_model_name: str | None = DEFAULT_MODEL_NAME, experiment_name: str = "nvum",
                        bundle_dir=None, example_images: Sequence | None = None, name: str = BUNDLE_NAME):
    """Export, pack, log and register a checkpoint in a new MLflow run (``register_<checkpoint name>``).

    Builds the deployable bundle (:func:`build_bundle`), logs its zip as the run's artifact
    ``bundle/<name>.zip`` and the pyfunc model (:func:`log_pyfunc_model`) in a new run of
    ``experiment_name`` (created as the training creates it); the run is marked failed when a step fails.

    Args:
        record: what the run trained (:func:`custom.deploy.export.checkpoint_record`).
        tracking_uri: the MLflow store.

    Returns:
        ``(deployable, run_id, version)``: what :func:`build_bundle` wrote, the run and the
        ``ModelVersion`` (the ``ModelInfo`` when not registering).
    """
    import mlflow

    with tempfile.TemporaryDirectory() as staging:
        built = build_bundle(checkpoint, models_dir, staging, bundle_dir, record, name, example_images)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiment_id = get_or_create_experiment(client, experiment_name)
        run = client.create_run(experiment_id, run_name=f"register_{Path(checkpoint).name}")
        try:
            client.log_artifact(run.info.run_id, str(built.zip), "bundle")
            version = log_pyfunc_model(built, example_images or (), registered_model_name, tracking_uri,
                                       run.info.run_id)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
    return built, run.info.run_id, version


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


@contextlib.contextmanager
def quiet_mlflow_logging():
    """Logging the model without MLflow's notice that a Python model object is pickled (the bundle
    logs its own ``PythonModel`` class on purpose; loading it runs the bundle's code, which is shipped
    with it) and without its download progress bars."""
    drop = _DropMessages("Passing a Python object as `python_model`",
                         "Validating input example against model signature")
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(drop)
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.removeFilter(drop)
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


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


def get_or_create_experiment(client, name: str) -> str:
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


def eval_metrics(test_report) -> dict[str, float]:
    """``{"mean_auc_diseases_<test set>": AUC}`` from a test report's results (empty without results)."""
    results = getattr(test_report, "results", None) or {}
    out = {}
    for name, table in results.items():
        value = float(table.iloc[-1]["auc"])  # the last row is the mean over the diseases
        if value == value:  # not NaN
            out[f"mean_auc_diseases_{name}"] = round(value, 4)
    return out


class ModelRegistrar:
    """Final step of the training workflow: deploy the best checkpoint inside the training's MLflow run.

    With tracking on, it builds the deployable bundle (:func:`build_bundle`: ``model.ts``, checks,
    ``<name>.zip``), logs the zip as the run's artifact ``bundle/<name>.zip``, logs the pyfunc
    model as ``model`` with an input example of ``example_images``, registers it as
    ``registered_model_name`` and ends the run. With tracking off it does nothing.

    Args:
        tracker: the workflow's :class:`~custom.training.MLflowTracker`.
        models_dir: where ``model.ts`` and the zip are written.
        checkpoint: the best weights (default: ``models_dir/model.pt``).
        record: the run's :class:`~custom.record.RunRecord` (or its state dict: classes, input size, network).
        example_images: image files for the MLflow input example (the first two are used), or a data list
            (its first two validation images).
        registered_model_name: name in the registry; ``null``/empty logs the model unregistered.
        test_report: the workflow's :class:`~custom.evaluation.TestReport`; its mean AUCs over the
            diseases become the deployable metadata's ``eval_metrics`` (``mean_auc_diseases_<test set>``).
        bundle_dir: source bundle folder (default: the repository's ``bundle/``).
        bundle_name: folder name inside the zip.

    In train.json it is a step of the workflow's ``training`` list after ``trainer.run()``, left out
    (``_disabled_``) when ``test_and_deploy`` is false.
    """

    def __init__(self, tracker, models_dir, checkpoint=None, record=None, example_images: Sequence = (),
                 registered_model_name: str | None = DEFAULT_MODEL_NAME, bundle_dir=None,
                 bundle_name: str = BUNDLE_NAME, test_report=None):
        self.tracker, self.models_dir = tracker, models_dir
        self.checkpoint = checkpoint if checkpoint not in (None, "") else Path(models_dir) / "model.pt"
        self.record = record.state_dict() if hasattr(record, "state_dict") else record
        if hasattr(example_images, "items"):  # a data list: its first validation images
            example_images = [item["image"] for item in example_images.items("validation")[:2]]
        self.example_images = list(example_images)[:2]
        self.registered_model_name = registered_model_name or None
        self.bundle_dir, self.bundle_name = bundle_dir, bundle_name
        self.test_report = test_report
        self.version = None
        self.written: list[tuple[str, object]] = []  # (what, path) of what it wrote, for custom.RunSummary

    def check(self) -> None:
        """Before training (:class:`custom.RunSummary`): the model folder is writable."""
        from ..files import check_writable

        check_writable(self.models_dir, "model folder (ckpt_dir)")

    def bundle_record(self) -> dict | None:
        """The run record that goes into the bundle (``models/model.json``): the run's, with the operating
        thresholds (``thresholds``, ``threshold_rule``, ``threshold_notes``, ``threshold_split``) written into the
        record beside the checkpoint after training, else those the test report holds."""
        from ..record import read_record, record_path

        record = dict(self.record) if self.record else None
        sidecar = record_path(self.checkpoint)
        stored = (read_record(sidecar) or {}) if sidecar.is_file() else {}
        keys = ("thresholds", "threshold_rule", "threshold_notes", "threshold_split")
        extra = {k: stored[k] for k in keys if stored.get(k) is not None}
        if not extra.get("thresholds") and getattr(self.test_report, "thresholds", None):
            extra = {"thresholds": dict(self.test_report.thresholds),
                     "threshold_notes": dict(getattr(self.test_report, "threshold_notes", {}) or {})}
        if record is None or not extra.get("thresholds"):
            return record
        return {**record, **extra}

    def run(self):
        """Returns the registered ``ModelVersion`` (``None`` with tracking or the step off)."""
        if not getattr(self.tracker, "enabled", False):
            print("MLflow tracking is off: the model is neither exported nor registered", flush=True)
            return None
        self.tracker.start()
        run_id = self.tracker.run_id
        try:
            with tempfile.TemporaryDirectory() as staging:
                built = build_bundle(self.checkpoint, self.models_dir, staging, self.bundle_dir, self.bundle_record(),
                                     self.bundle_name, self.example_images, eval_metrics(self.test_report))
                print(f"exported {built.model_ts} (largest logit difference to the checkpoint "
                      f"{built.max_difference:.2g}); bundle {built.zip}", flush=True)
                self.written += [("TorchScript model", built.model_ts), ("deployable bundle", built.zip)]
                self.tracker.log_file(built.zip, "bundle")
                self.version = log_pyfunc_model(built, self.example_images, self.registered_model_name,
                                                self.tracker.client.tracking_uri, run_id)
        except BaseException:
            self.tracker.run_finish_status = "FAILED"  # the run ends below, marked as failed
            raise
        finally:
            self.tracker.finish()
        self.written.append(("MLflow run", f"{run_id} in {self.tracker.client.tracking_uri}"))
        if self.registered_model_name:
            uri = f"models:/{self.version.name}/{self.version.version}"
            self.written.append(("registered MLflow model", uri))
            print(f"registered {uri} (run {run_id}); serve it with: "
                  f"MLFLOW_TRACKING_URI={self.tracker.client.tracking_uri} mlflow models serve -m {uri} "
                  "--env-manager local -h 127.0.0.1 -p 5001", flush=True)
        return self.version
