"""The NIH recipe at its real size: train.json with the NIH overlay (DenseNet121, 512 px, batch 16, its optimiser,
crop and flip) on a prepared store of 1024-pixel images, for one epoch with validation, the test report, export,
and inference on the exported bundle, all through the command lines a user runs (bundle/docs/scaling.md)."""

import json
import os
import resource
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import CONFIGS, ROOT

pytestmark = pytest.mark.slow

CLASSES = json.loads((CONFIGS / "common.json").read_text())["classes"]
NIH = "['bundle/configs/train.json','bundle/configs/datasets/nih.json']"
#: one training batch of the recipe; validation and test sets with positives and negatives of every class.
SPLITS = {"training": 16, "validation": 8, "test": 8}


def _run(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout + proc.stderr, time.perf_counter() - start


def _originals(folder):
    """1024 x 1024 8-bit grey PNGs (a chest-like gradient, a disc, noise) and their data list."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024
    content, n = {"classes": CLASSES}, 0
    for split, count in SPLITS.items():
        content[split] = []
        for i in range(count):
            disc = ((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2 < rng.uniform(0.01, 0.04))
            pixels = 0.3 + 0.4 * np.sin(np.pi * xx) * np.sin(np.pi * yy) + 0.2 * disc + rng.normal(0, 0.02, xx.shape)
            name = f"{n:03d}.png"
            Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(folder / name)
            label = [int((i + c) % 2 == 0) for c in range(len(CLASSES))]
            content[split].append({"image": name, "label": label, "patient": f"p{n}"})
            n += 1
    (folder / "list.json").write_text(json.dumps(content))
    return folder / "list.json"


def test_the_nih_recipe_at_512_pixels_trains_tests_exports_and_infers_from_a_prepared_store(tmp_path):
    source = _originals(tmp_path / "originals")
    store = tmp_path / "store"
    _run("custom.cli", "prepare", "--datalist", source, "--image_size", "512", "--output", store, "--workers", "0",
         "--progress", "false")
    images = np.load(store / "images.npy", mmap_mode="r")
    assert images.shape == (32, 512, 512) and images.dtype == np.uint8
    bundle = tmp_path / "run"
    printed, seconds = _run("monai.bundle", "run", "training", "--config_file", NIH, "--datalist",
                            store / "datalist.json", "--bundle_root", bundle, "--max_epochs", "1", "--num_workers",
                            "0", "--mlflow", "false")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = json.loads((bundle / "models" / "model.json").read_text())
    assert record["image_size"] == 512 and record["num_training"] == 16
    assert "Epoch[1] Metrics -- val_mean_auc" in printed
    report = pd.read_csv(bundle / "eval" / "test_test.csv").set_index("class")
    assert list(report.index[:len(CLASSES)]) == CLASSES and (report.loc[CLASSES, "positives"] == 4).all()
    _run("custom.cli", "export", "--checkpoint", bundle / "models" / "model.pt")  # --mlflow false: export alone
    zip_path = bundle / "models" / "nvum_cxr_classification.zip"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp_path / "export")
    exported = tmp_path / "export" / "nvum_cxr_classification"
    assert json.loads((exported / "configs" / "inference.json").read_text())["image_size"] == 512
    out = tmp_path / "probabilities.csv"
    _run("monai.bundle", "run", "--config_file", "configs/inference.json", "--input_path", tmp_path / "originals",
         "--output_file", out, cwd=exported)
    probs = pd.read_csv(out)
    errors = out.with_name("errors.csv")  # the out-of-distribution gate of a 16-image run may refuse a few
    refused = pd.read_csv(errors)["reason"] if errors.is_file() else pd.Series([], dtype=str)
    assert refused.str.startswith("not like the training images: distance ").all() and len(refused) <= 3
    assert len(probs) + len(refused) == 32 and list(probs.columns[1:]) == CLASSES
    assert np.isfinite(probs[CLASSES].to_numpy()).all()
    print(f"\n512-px recipe: training job {seconds:.0f} s (one step of 16, validation, test report, export), "
          f"peak memory of a child process {peak_mb:.0f} MB")
