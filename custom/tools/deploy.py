"""``python -m custom.cli export`` / ``register``: the deployment steps of training, run on any checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..deploy.export import BUNDLE_NAME, Deployable, build_bundle
from ..deploy.registry import DEFAULT_MODEL_NAME, get_or_create_experiment, log_pyfunc_model


def _record(checkpoint, classes=None, image_size=None) -> dict | None:
    """The run record beside ``checkpoint`` (``model.json``), with ``classes``/``image_size`` given on
    the command line taking precedence (for weights files that come without a record)."""
    from ..record import read_record

    record = dict(read_record(checkpoint) or {}) if Path(checkpoint).with_suffix(".json").is_file() else {}
    if classes:
        record["classes"] = [classes] if isinstance(classes, str) else list(classes)
    if image_size:
        record["image_size"] = int(image_size)
    return record or None


def export_command(checkpoint="bundle/models/model.pt", models_dir=None, bundle_dir=None, classes=None, image_size=None,
                   name: str = BUNDLE_NAME, weights_url=None) -> Deployable:
    """``python -m custom.cli export``: ``model.ts`` and the deployable zip from a checkpoint, checked; no MLflow.

    The classes, input size and network are read from the run record beside the checkpoint
    (``model.json``, written by training); ``classes`` and ``image_size`` override them.
    ``weights_url``: where ``model.pt`` and ``model.ts`` will be published (the urls of ``large_files.yml``).
    """
    models_dir = Path(models_dir) if models_dir else Path(checkpoint).parent
    with tempfile.TemporaryDirectory() as staging:
        record = _record(checkpoint, classes, image_size)
        built = build_bundle(checkpoint, models_dir, staging, bundle_dir, record, name, weights_url=weights_url)
    print(f"TorchScript model: {built.model_ts} (largest logit difference to {checkpoint}: {built.max_difference:.2g})")
    print(f"deployable bundle: {built.zip} (metadata and network checks passed)")
    return built


def register_command(checkpoint="bundle/models/model.pt", registered_model_name: str = DEFAULT_MODEL_NAME,
                     tracking_uri=None, experiment_name: str = "nvum", models_dir=None, bundle_dir=None, classes=None,
                     image_size=None, example_images=None, name: str = BUNDLE_NAME):
    """``python -m custom.cli register``: export, pack, log and register a checkpoint in a new MLflow run.

    For checkpoints trained with ``--mlflow false`` (the training workflow registers its model
    itself when tracking is on). ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI`` or the
    training's store, ``sqlite:///bundle/eval/mlruns.db``.
    """
    import mlflow

    from ..training.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri("bundle/eval")
    models_dir = Path(models_dir) if models_dir else Path(checkpoint).parent
    if isinstance(example_images, str):
        example_images = [example_images]
    with tempfile.TemporaryDirectory() as staging:
        record = _record(checkpoint, classes, image_size)
        built = build_bundle(checkpoint, models_dir, staging, bundle_dir, record, name, example_images)
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = get_or_create_experiment(client, experiment_name)
        run = client.create_run(experiment_id, run_name=f"register_{Path(checkpoint).name}")
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
