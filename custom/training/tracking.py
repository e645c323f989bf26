"""MLflow tracking of a training run (MONAI's handler, switchable from config)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ignite.engine import Engine
from monai.handlers import MLFlowHandler

from ..flags import as_bool


def default_tracking_uri(output_dir) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a sqlite store in ``output_dir/mlruns.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str((Path(output_dir) / "mlruns.db").resolve())


class MLflowTracker(MLFlowHandler):
    """MONAI's :class:`~monai.handlers.MLFlowHandler` that can be switched off from config and
    that also logs files and metrics for code outside the engines (the final test report).

    Why not the stock handler: an unnamed run never continues another unfinished run of the
    experiment, the store defaults to ``output_dir``, and code outside the engines (the test report,
    the registration) logs to the same run. In train.json it is the last of ``train#handlers`` and of
    ``validate#handlers`` (the validation metrics are logged per epoch), left out with ``mlflow`` false
    (``_disabled_``), and finished by the workflow after the steps after training.

    Args:
        enabled: false attaches nothing and logs nothing (for code; configs disable the component).
        output_dir: where the default sqlite store and artifacts go (see :func:`default_tracking_uri`).
        record: the run record (train.json's ``run_record``, a :class:`custom.RunRecord`): its parameters are the
            run's.
        kwargs: passed to ``MLFlowHandler`` (``tracking_uri`` overrides the default).
    """

    def __init__(self, enabled: bool = True, output_dir: str = ".", record=None, **kwargs):
        if record is not None:
            kwargs.setdefault("experiment_param", record.params())
        self.enabled = as_bool(enabled, "mlflow")
        if not self.enabled:  # no MLflow client at all: it would create a store in the working directory
            self.cur_run, self.run_name, self.experiment_param = None, kwargs.get("run_name"), None
            return
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("tracking_uri", default_tracking_uri(output_dir))
        kwargs.setdefault("artifact_location", (Path(output_dir) / "mlartifacts").resolve().as_uri())
        super().__init__(**kwargs)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def start(self, engine: Engine | None = None) -> None:
        """Start a new run, unless this tracker already has one.

        Unlike ``MLFlowHandler.start``, an unnamed tracker never resumes some other unfinished
        run of the experiment (for example one left behind by a crashed process).
        """
        if not self.enabled:
            return
        if not self.cur_run:
            if not self.experiment:
                client, name = self.client, self.experiment_name
                self.experiment = client.get_experiment_by_name(name) or client.get_experiment(
                    client.create_experiment(name, artifact_location=self.artifact_location))
            name = self.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"
            self.cur_run = self.client.create_run(experiment_id=self.experiment.experiment_id, run_name=name)
        if engine is not None:
            super().start(engine)
        elif self.experiment_param:
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in self.experiment_param.items()])

    @property
    def run_id(self) -> str | None:
        return self.cur_run.info.run_id if self.enabled and self.cur_run else None

    def log_file(self, path, artifact_path: str | None = None) -> None:
        """Log a file as an artifact of the current run (started if needed; no-op when disabled)."""
        self.start()
        if self.run_id:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_values(self, metrics: dict, step: int | None = None) -> None:
        """Log scalar metrics to the current run (started if needed; no-op when disabled)."""
        self.start()
        if self.run_id:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step or 0) for k, v in metrics.items()])

    def finish(self) -> None:
        """End the current run (marks it FINISHED)."""
        if self.run_id:
            self.close()
