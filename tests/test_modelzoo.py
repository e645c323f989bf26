"""The deployable bundle as the MONAI model-zoo judges it: the checks of its ``ci/verify_bundle.py``
run through MONAI's own functions, and a model-zoo style unit test (train, evaluate, infer through
``ConfigWorkflow`` with ``check_properties``) run from the unzipped bundle in a fresh folder."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out
from PIL import Image

from conftest import train_tiny_bundle

pytestmark = pytest.mark.slow  # trains and builds a bundle zip, runs model-zoo's scripts in subprocesses

NAME = "nvum_cxr_classification"

@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory):
    """A tiny training run of the repository's train.json (no MLflow) and the deployable zip of its model."""
    return train_tiny_bundle(tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("staging")).zip


def _unzip(zip_path, dest) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    return Path(dest) / NAME


def test_verify_bundle_checks_pass_on_the_zip_through_monai_functions(bundle_zip, tmp_path, monkeypatch):
    """What ``ci/verify_bundle.py -m full`` checks, in its order, offline."""
    from monai.apps.utils import HashCheckError, download_url

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    bundle = _unzip(bundle_zip, tmp_path)
    # large files: CI "downloads" each entry; a present file with the listed hash is kept, nothing is fetched
    from monai.bundle import ConfigParser

    entries = ConfigParser.load_config_file(bundle / "large_files.yml")["large_files"]
    assert sorted(e["path"] for e in entries) == ["models/model.pt", "models/model.ts"]
    for e in entries:
        assert (bundle / e["path"]).stat().st_size > 25_000_000 and e["hash_type"] == "sha256"
        download_url(url=e["url"], filepath=bundle / e["path"], hash_val=e["hash_val"], hash_type=e["hash_type"])
    shutil.copy(bundle / "models" / "model.ts", tmp_path / "other.ts")
    with pytest.raises(HashCheckError):  # the hash is checked: another file under the name is refused
        download_url(url="", filepath=tmp_path / "other.ts", hash_val=entries[0]["hash_val"], hash_type="sha256")
    # necessary and preferred files
    for f in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (bundle / f).is_file(), f
    assert "Apache License" in (bundle / "LICENSE").read_text()
    # version and changelog
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    # metadata format, against the schema the metadata names (CI copies it to eval/schema.json)
    schema = bundle / "docs" / meta["schema"].rsplit("/", 1)[-1]
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))
    # data shape, then TorchScript export from models/model.pt and loading of the provided model.ts
    common = {"net_id": "network_def", "meta_file": str(bundle / "configs" / "metadata.json"),
              "config_file": str(bundle / "configs" / "inference.json"), "bundle_root": str(bundle)}
    verify_net_in_out(**common)
    nih = ConfigParser()  # the real-data overlay's data lists travel with the bundle, relative to bundle_root
    nih.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "datasets" / "nih.json")])
    nih["bundle_root"] = str(bundle)
    for key in ("datalist_file", "google_datalist"):
        assert Path(nih.get_parsed_content(key)).parent == bundle / "data_lists", key
        assert Path(nih.get_parsed_content(key)).is_file(), key
    ckpt_export(filepath=str(bundle / "models" / "verify_model.ts"), ckpt_file=str(bundle / "models" / "model.pt"),
                **common)
    exported, provided = (torch.jit.load(str(bundle / "models" / n)) for n in ("verify_model.ts", "model.ts"))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert (exported(x) - provided(x)).abs().max() < 1e-5  # the zip's model.ts is its model.pt


def test_model_zoo_verify_bundle_script_passes_when_a_checkout_is_given(bundle_zip, tmp_path):
    """Runs model-zoo's own ``ci/verify_bundle.py -m full`` as its CI does (schema in eval/, a
    model_info.json). Needs a model-zoo checkout, named by ``$NVUM_MODEL_ZOO``; not part of this project."""
    checkout = os.environ.get("NVUM_MODEL_ZOO")
    if not checkout or not (Path(checkout) / "ci" / "verify_bundle.py").is_file():
        pytest.skip("set NVUM_MODEL_ZOO to a Project-MONAI/model-zoo checkout to run its ci/verify_bundle.py")
    models = tmp_path / "models"
    bundle = _unzip(bundle_zip, models)
    (models / "model_info.json").write_text("{}")
    (bundle / "eval").mkdir()
    shutil.copy(next((bundle / "docs").glob("meta_schema_*.json")), bundle / "eval" / "schema.json")
    shutil.copytree(Path(checkout) / "ci", tmp_path / "ci")
    cmd = [sys.executable, "ci/verify_bundle.py", "-b", NAME, "-p", "models", "-m", "full"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Provided TorchScript module is verified correctly." in proc.stdout


def _fake_dataset(folder: Path, classes, sizes=(("training", 24), ("validation", 12), ("test", 12))) -> Path:
    """Random grey PNGs of several sizes and random labels (every class positive and negative in each split)."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    datalist = {"classes": list(classes)}
    for split, n in sizes:
        labels = (np.arange(n)[:, None] + np.arange(len(classes))[None]) % 2  # both values in every column
        items = []
        for i in range(n):
            name = f"images/{split}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (40 + i % 3 * 8, 36), dtype=np.uint8)).save(folder / name)
            items.append({"image": name, "label": labels[i].tolist(), "patient": f"{split}{i}"})
        datalist[split] = items
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder / "datalist.json"


UNIT_TEST = textwrap.dedent("""
    import json, sys
    from monai.bundle import ConfigWorkflow

    bundle, data, images = sys.argv[1:4]
    configs = bundle + "/configs/"
    common = dict(logging_file=configs + "logging.conf", meta_file=configs + "metadata.json", bundle_root=bundle)
    own_data = {"datalist": data + "/datalist.json", "dataset_dir": data, "max_epochs": 1, "batch_size": 8}

    def check_workflow(workflow):  # model-zoo's ci/unit_tests/utils.py, with check_properties=True
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"check properties for workflow failed: {missing}")
        workflow.run()
        workflow.finalize()

    check_workflow(ConfigWorkflow(workflow_type="train", config_file=configs + "train.json", **common, **own_data))
    check_workflow(ConfigWorkflow(workflow_type="train", config_file=[configs + "train.json",
                                  configs + "evaluate.json"], **common, **own_data, mlflow=False,
                                  output_dir=bundle + "/eval_again"))
    check_workflow(ConfigWorkflow(workflow_type="infer", config_file=configs + "inference.json", **common,
                                  input_path=images))
    import custom
    print("custom from", custom.__file__)
""")


def test_model_zoo_style_unit_test_trains_evaluates_and_infers_from_the_unzipped_bundle(bundle_zip, tmp_path):
    bundle = _unzip(bundle_zip, tmp_path / "models")
    classes = json.loads((bundle / "configs" / "inference.json").read_text())["classes"]
    _fake_dataset(tmp_path / "data", classes)
    fresh = tmp_path / "fresh"  # neither the repository nor the bundle is the working folder
    fresh.mkdir()
    (fresh / "unit_test.py").write_text(UNIT_TEST)
    shipped = (bundle / "models" / "model.pt").read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(bundle), OMP_NUM_THREADS="1")  # as model-zoo's runner: the bundle folder on the path
    cmd = [sys.executable, "unit_test.py", str(bundle), str(tmp_path / "data"), str(tmp_path / "data" / "images")]
    proc = subprocess.run(cmd, cwd=fresh, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"custom from {bundle / 'custom' / '__init__.py'}" in proc.stdout  # the zip's own code ran
    assert (bundle / "models" / "model.pt").read_bytes() != shipped  # trained on the user's data list
    record = json.loads((bundle / "models" / "model.json").read_text())
    assert Path(record["datalist"]) == tmp_path / "data" / "datalist.json" and record["num_training"] == 24
    assert (bundle / "eval" / "test_test.csv").is_file() and (bundle / "eval_again" / "test_test.csv").is_file()
    probs = pd.read_csv(bundle / "inference" / "probabilities.csv")
    errors = bundle / "inference" / "errors.csv"  # the out-of-distribution gate of a 24-image run refuses a few
    refused = pd.read_csv(errors)["reason"] if errors.is_file() else pd.Series([], dtype=str)
    assert refused.str.startswith("not like the training images: distance ").all() and len(refused) <= 4
    assert len(probs) + len(refused) == 48 and list(probs.columns[1:]) == classes
    assert ((probs.iloc[:, 1:] >= 0) & (probs.iloc[:, 1:] <= 1)).all().all()
    rebuilt = bundle / "models" / f"{NAME}.zip"  # training from the bundle ends by deploying again, from the bundle
    with zipfile.ZipFile(rebuilt) as zf:
        names = set(zf.namelist())
    expected = ("LICENSE", "configs/train.json", "models/model.pt", "data_lists/nih_nih14.json.gz")
    assert {f"{NAME}/{f}" for f in expected} <= names
    assert [p.name for p in fresh.iterdir()] == ["unit_test.py"]  # nothing was written into the working folder
