"""Shared test setup: the repository root on ``sys.path`` (configs import ``custom``)."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "bundle" / "configs"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write the synthetic data cache or MLflow stores outside pytest's temporary folders."""
    monkeypatch.setenv("NVUM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nvum-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("PYTHONHASHSEED", "0")


#: a training run of seconds: 64 training images, one epoch (sizes of the synthetic data list and the recipe).
TINY_RUN = {"datalist#num_training": 64, "datalist#num_validation": 32, "datalist#num_test": 32,
            "datalist#num_test_shifted": 32, "max_epochs": 1, "batch_size": 32}


def train_tiny_bundle(root: Path, staging: Path):
    """Train the repository's train.json for one tiny epoch in ``root`` (data in ``root/data``, no MLflow,
    no test or export) and build the deployable bundle of its model in ``root/out``; the built bundle."""
    from monai.bundle import ConfigWorkflow

    from custom.deploy.export import build_bundle

    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
                        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", bundle_root=str(root),
                        mlflow=False, test_and_deploy=False, **{"datalist#root": str(root / "data")}, **TINY_RUN)
    wf.initialize()
    wf.run()
    wf.finalize()
    return build_bundle(root / "models" / "model.pt", root / "out", staging)


def inference_preprocessing():
    """The bundle's inference preprocessing (common.json's ``preprocessing``), built."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "common.json"))
    return parser.get_parsed_content("preprocessing")


def write_probabilities(csv_path, classes, probs, **kwargs):
    """Run a ProbabilityWriter (``csv_path``, ``classes``, ``kwargs``) over one batch of ``probs`` (rows of class
    probabilities of images ``0.png``, ``1.png``, ...), as the evaluator would; returns the writer."""
    from types import SimpleNamespace

    import torch
    from monai.data import MetaTensor

    from custom.serving.inference import ProbabilityWriter

    writer = ProbabilityWriter(csv_path, classes, **kwargs)
    output = [{"pred": torch.tensor(p), "image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": f"{i}.png"})}
              for i, p in enumerate(probs)]
    engine = SimpleNamespace(state=SimpleNamespace(output=output, batch=[{}] * len(output)))
    writer._reset(engine)
    writer._collect(engine)
    writer._write(engine)
    return writer


def infer_with_stub(items, out: Path, classes, batch_size: int = 8, **dataset):
    """inference.json's dataset and writer on ``items`` with a stand-in network (every probability 0.5), writing
    into ``out``; returns ``(errors: {image: reason}, scored images, the probabilities file's header)``."""
    import csv

    import torch
    from ignite.engine import Engine
    from monai.data import DataLoader, decollate_batch

    from custom.serving.inference import InferenceDataset, ProbabilityWriter

    writer = ProbabilityWriter(Path(out) / "probs.csv", classes)

    def step(engine, batch):
        decoded = decollate_batch(batch)
        engine.state.batch = decoded
        return [{"image": o["image"], "pred": torch.full((len(classes),), 0.5)} for o in decoded]

    engine = Engine(step)
    writer.attach(engine)
    engine.run(DataLoader(InferenceDataset(items, inference_preprocessing(), **dataset), batch_size=batch_size))
    with open(Path(out) / "errors.csv", newline="") as f:
        errors = {row["image"]: row["reason"] for row in csv.DictReader(f)}
    with open(Path(out) / "probs.csv", newline="") as f:
        rows = list(csv.reader(f))
    return errors, [row[0] for row in rows[1:]], rows[0]
