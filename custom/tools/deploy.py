"""``python -m custom.cli export`` / ``register``: the deployment steps of training, run on any checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..deploy.export import BUNDLE_NAME, Deployable, build_bundle, checkpoint_record
from ..deploy.registry import DEFAULT_MODEL_NAME, register_checkpoint


def export_command(checkpoint="bundle/models/model.pt", models_dir=None, bundle_dir=None, classes=None, image_size=None,
                   name: str = BUNDLE_NAME, weights_url=None) -> Deployable:
    """``python -m custom.cli export``: ``model.ts`` and the deployable zip from a checkpoint, checked; no MLflow.

    The classes, input size and network are read from the run record beside the checkpoint
    (``model.json``, written by training); ``classes`` and ``image_size`` override them.
    ``weights_url``: where ``model.pt`` and ``model.ts`` will be published (the urls of ``large_files.yml``).
    """
    models_dir = Path(models_dir) if models_dir else Path(checkpoint).parent
    record = checkpoint_record(checkpoint, classes, image_size)
    with tempfile.TemporaryDirectory() as staging:
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
    from ..training.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri("bundle/eval")
    models_dir = Path(models_dir) if models_dir else Path(checkpoint).parent
    if isinstance(example_images, str):
        example_images = [example_images]
    record = checkpoint_record(checkpoint, classes, image_size)
    built, run_id, version = register_checkpoint(checkpoint, models_dir, record, uri, registered_model_name,
                                                 experiment_name, bundle_dir, example_images, name)
    print(f"deployable bundle: {built.zip}; MLflow run {run_id} in {uri}")
    if registered_model_name:
        print(f"registered models:/{version.name}/{version.version}")
    return version
