"""The real-data path on real NIH ChestX-ray14 images (bundle/docs/first_run_nih.md runs the same commands).

Reads the folder named by ``$NVUM_REAL_NIH`` (``images/*.png`` and ``labels.csv``, the NIH table's rows
of those images; ``.ci/run`` sets it when the shared sample is beside the clone) and skips without it.
The sample expected is the shared one: 1,000 images (64 x 64, 979 RGB and 21 RGBA) of 264 patients.
It builds the data list, checks the run, trains 2 epochs at 64 px, evaluates on the validation split,
runs inference with Grad-CAM heatmaps and the served model (the pyfunc class, in-process). The AUCs of
so small a run measure nothing; the test asserts counts, splits, decoding and output shapes.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT

REAL = os.environ.get("NVUM_REAL_NIH", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL, reason="NVUM_REAL_NIH is not set: point it at a folder of real NIH images "
                                        "(images/*.png) with their rows of the NIH table (labels.csv)"),
]

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
           "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "No Finding"]
NIH = "['bundle/configs/train.json','bundle/configs/datasets/nih.json']"
SMALL = ["--image_size", "64", "--num_workers", "0"]


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every step once, in the order a user runs them; returns the folders and printed output."""
    data = Path(REAL)
    out = tmp_path_factory.mktemp("nih_first_run")
    lists, bundle = out / "lists", out / "run"
    datalist = lists / "nih_nih14.json.gz"
    printed = {}
    printed["build"] = _run("custom.cli", "build_datalist", "--dataset", "nih", "--scheme", "nih14",
                            "--metadata", data / "labels.csv", "--dataset_dir", data, "--output", datalist)
    common = ["--dataset_dir", data, "--datalist_file", datalist, "--google_datalist", "", "--bundle_root", bundle,
              *SMALL]
    printed["check"] = _run("custom.cli", "check", "--config_file", NIH, *common, "--batch_size", "32",
                            "--test_and_deploy", "false")
    printed["train"] = _run("monai.bundle", "run", "training", "--config_file", NIH, *common, "--batch_size", "32",
                            "--max_epochs", "2", "--lr_milestones", "[1]", "--test_and_deploy", "false",
                            "--mlflow", "false", "--nvum#use_teacher", "false")  # 2 epochs: nvum (first_run_nih.md)
    validation = f"[{{'path': '{datalist}', 'dataset_dir': '{data}', 'splits': ['validation'], 'name': 'validation'}}]"
    printed["evaluate"] = _run("monai.bundle", "run", "--config_file",
                               "['bundle/configs/train.json','bundle/configs/datasets/nih.json',"
                               "'bundle/configs/evaluate.json']", *common, "--mlflow", "false",
                               "--test_lists", validation, "--bootstrap_resamples", "200")
    # probabilities of every image; heatmaps of a sample (Grad-CAM of all 1,000 takes minutes on a CPU):
    # the RGBA images and the first RGB ones
    printed["infer"] = _run("monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
                            "--bundle_root", bundle, "--input_path", data / "images", "--output_dir", out / "infer",
                            "--image_size", "64")
    files = sorted((data / "images").glob("*.png"))
    modes = {p.name: Image.open(p).mode for p in files}
    sample = [p for p in files if modes[p.name] != "RGB"] + [p for p in files if modes[p.name] == "RGB"][:11]
    (out / "sample").mkdir()
    for p in sample:
        shutil.copy(p, out / "sample" / p.name)
    printed["heatmaps"] = _run("monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
                               "--bundle_root", bundle, "--input_path", out / "sample", "--output_dir",
                               out / "sample_out", "--image_size", "64", "--heatmaps", "true", "--heatmap_top_k", "1")
    printed["export"] = _run("custom.cli", "export", "--checkpoint", bundle / "models" / "model.pt",
                             "--models_dir", out / "export")
    return SimpleNamespace(data=data, out=out, bundle=bundle, datalist=datalist, printed=printed, files=files,
                           modes=modes, sample=sample)


def test_the_list_keeps_all_1000_images_and_splits_264_patients_patient_wise(run):
    assert len(run.files) == 1000 and len(pd.read_csv(run.data / "labels.csv")) == 1000
    summary = json.loads((run.datalist.parent / "nih_nih14.summary.json").read_text())
    assert summary["rows_read"] == 1000
    # every image was found: the only rows dropped are the 42 positive for Consolidation, not in nih14
    assert summary["dropped"] == {"positive for a class outside nih14 (Consolidation)": 42}
    assert summary["images"] == {"training": 729, "validation": 229, "test": 0, "total": 958}
    assert summary["patients"] == {"training": 170, "validation": 94, "test": 0}
    with gzip.open(run.datalist, "rt") as f:
        datalist = json.load(f)
    patients = {split: {item["patient"] for item in datalist[split]} for split in ("training", "validation")}
    assert not patients["training"] & patients["validation"]
    assert len(patients["training"] | patients["validation"]) == 264 == pd.read_csv(run.data / "labels.csv")[
        "Patient ID"].nunique()
    assert datalist["classes"] == CLASSES and all(len(i["label"]) == 14 for i in datalist["training"])
    assert "images:   training 729, validation 229  (total 958)" in run.printed["build"]


def test_check_decodes_every_listed_image_and_training_records_the_real_counts(run):
    assert "all 958 images decode" in run.printed["check"]
    assert "patients per split (none shared): training 170, validation 94, test 0" in run.printed["check"]
    record = json.loads((run.bundle / "models" / "model.json").read_text())
    assert record["num_training"] == 729 and record["classes"] == CLASSES
    assert "Epoch[2] Metrics -- val_mean_auc" in run.printed["train"]
    table = pd.read_csv(run.bundle / "eval" / "test_validation.csv").set_index("class")
    assert "Test AUC on 'validation'" in run.printed["evaluate"] and "229 images" in run.printed["evaluate"]
    assert table.loc["Effusion", "positives"] == 16 and 0 <= table.loc["Effusion", "auc"] <= 1


def _refused(folder) -> dict[str, str]:
    """{image name: reason} of an inference run's errors.csv (none when it has none)."""
    errors = Path(folder) / "errors.csv"
    return dict(zip((Path(p).name for p in pd.read_csv(errors)["image"]), pd.read_csv(errors)["reason"])) \
        if errors.exists() else {}


def test_inference_gives_14_probabilities_for_every_image_the_gate_accepts_rgba_included(run):
    from custom.evaluation.ood import REFUSAL

    assert sum(m == "RGBA" for m in run.modes.values()) == 21 and sum(m == "RGB" for m in run.modes.values()) == 979
    probs = pd.read_csv(run.out / "infer" / "probabilities.csv")
    scored, refused = sorted(Path(p).name for p in probs["image"]), _refused(run.out / "infer")
    # every image is scored or refused by the out-of-distribution gate (the lane's own images: at most 1% refused)
    assert sorted(scored + list(refused)) == sorted(p.name for p in run.files) and len(refused) <= 10
    assert all(reason.startswith(f"{REFUSAL}: distance ") for reason in refused.values())
    values = probs[CLASSES].to_numpy()
    assert values.shape == (1000 - len(refused), 14) and np.isfinite(values).all()
    assert (values >= 0).all() and (values <= 1).all()


def test_heatmaps_exist_for_every_sampled_image_and_make_a_figure(run):
    from custom.serving.heatmaps import heatmap_figure

    index = pd.read_csv(run.out / "sample_out" / "heatmaps" / "heatmaps.csv")
    refused = _refused(run.out / "sample_out")  # the gate's refusals get no heatmap
    assert sorted(Path(p).name for p in index["image"]) == sorted(p.name for p in run.sample if p.name not in refused)
    for image, heatmap in zip(index["image"], index["heatmap"]):
        assert Path(heatmap).is_file() and Path(heatmap).name.startswith(Path(image).stem + "_")
        assert np.asarray(Image.open(heatmap)).shape == (256, 256, 3)
    figure = heatmap_figure(run.out / "sample_out" / "heatmaps" / "heatmaps.csv", run.out / "real_gradcam.png")
    assert Image.open(figure).size[0] > Image.open(figure).size[1] > 0  # into the run's folder, never the repository


def test_the_served_model_answers_14_probabilities_for_every_image(run):
    from custom.serving.pyfunc import ChestXrayClassifier

    with zipfile.ZipFile(run.out / "export" / "nvum_cxr_classification.zip") as z:
        z.extract("nvum_cxr_classification/configs/inference.json", run.out / "export")
    model = ChestXrayClassifier()
    model.load_context(SimpleNamespace(artifacts={
        "model": str(run.out / "export" / "model.ts"),
        "inference_config": str(run.out / "export" / "nvum_cxr_classification" / "configs" / "inference.json")}))
    # in requests of 200 images (the server's limit is 256 rows a request)
    served = pd.concat([model.predict(None, pd.DataFrame({"image": [p.read_bytes() for p in run.files[i : i + 200]]}))
                        for i in range(0, len(run.files), 200)], ignore_index=True)
    # training chose operating thresholds on validation, so each class has its decision column beside it
    assert list(served.columns) == CLASSES + [f"{c}_positive" for c in CLASSES] and len(served) == 1000
    decisions = served[[f"{c}_positive" for c in CLASSES]]
    served = served[CLASSES]
    assert decisions.isin([0, 1, True, False]).all().all()
    assert served.notna().all().all() and ((served >= 0) & (served <= 1)).all().all()
    # the same model as inference.json, to the float precision of its CSV (on the images its gate accepted: this
    # served model has no gate artifact)
    probs = pd.read_csv(run.out / "infer" / "probabilities.csv")
    by_name = probs.assign(name=[Path(p).name for p in probs["image"]]).set_index("name")[CLASSES]
    scored = [i for i, p in enumerate(run.files) if p.name in by_name.index]
    expected = by_name.loc[[run.files[i].name for i in scored]].to_numpy()
    assert len(scored) >= 990 and np.abs(served.to_numpy()[scored] - expected).max() < 1e-4


def test_the_gate_accepts_held_out_real_radiographs_and_refuses_the_non_chest_sets(run):
    """The gate of the lane's model (custom.evaluation.ood), fitted on the training images, its threshold set on the
    validation images of half the patients and measured on the other half (held out) and the OOD sets; then the
    halves swapped (two folds)."""
    import pandas as pd

    from custom.data.datalist import DataList
    from custom.evaluation.ood import fit_on_images, predict_features
    from custom.evaluation.ood_sets import NON_CHEST_SETS, ood_sets, ood_table
    from custom.networks import load_weights
    from custom.tools.training import bundle_network, train_parser

    network = load_weights(bundle_network(len(CLASSES)), run.bundle / "models" / "model.pt")
    transform = train_parser({"image_size": 64}).get_parsed_content("preprocessing")
    datalist = DataList(run.datalist, run.data)
    validation = datalist.items("validation")
    patients = sorted({item["patient"] for item in validation})
    half = set(np.random.default_rng(0).permutation(patients)[: len(patients) // 2])
    halves = {"A": [i for i in validation if i["patient"] in half],
              "B": [i for i in validation if i["patient"] not in half]}
    sets = ood_sets(run.out / "ood_sets", [i["image"] for i in halves["B"]])
    ood_features = {name: predict_features(network, [{"image": str(p)} for p in files], transform)[1]
                    for name, files in sets.items()}
    tables = []
    for fold, (threshold_on, held_out) in {"A": ("A", "B"), "B": ("B", "A")}.items():
        gate = fit_on_images(network.eval(), datalist.items("training"), halves[threshold_on], transform)
        distances = {"held_out": gate.distance(predict_features(network, halves[held_out], transform)[1])}
        table = ood_table(distances, {k: gate.distance(f) for k, f in ood_features.items()}, gate.threshold)
        tables.append(table.assign(threshold_on=f"half {threshold_on}"))
        rows = table.set_index("set")
        assert rows.loc["held_out", "images"] == len(halves[held_out]) and rows.loc["held_out", "accepted"] >= 0.97
        assert set(rows.index) == {"held_out", *sets} and (rows.loc[list(sets), "images"] > 0).all()
        # the target: at least 95% of each non-chest set refused (the transformed chest X-rays are reported)
        for name in NON_CHEST_SETS:
            assert rows.loc[name, "accepted"] <= 0.05, (fold, name, table.to_string(index=False))
    table = pd.concat(tables, ignore_index=True)
    print("\nreal NIH lane, out-of-distribution gate:")
    print(table.to_string(index=False))
    table.to_csv(run.out / "ood_real_nih.csv", index=False)
