"""Operating thresholds are never silently absent (issue 30, item 4): a run trained without the test report still
stores thresholds chosen on validation; where there are none, inference, export and the served model say that
decisions need them and how to get them; a class whose threshold is a default is named wherever it is used; a test
table says which split its thresholds were chosen on."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from conftest import CONFIGS

CLASSES = ["A", "B", "No Finding"]
HOW = "python -m monai.bundle run choose_thresholds --config_file bundle/configs/train.json"


def _write(tmp_path, probs, **kwargs):
    from conftest import write_probabilities

    write_probabilities(tmp_path / "out" / "probabilities.csv", CLASSES, probs, **kwargs)


def test_inference_without_thresholds_says_decisions_need_them_and_names_default_thresholds(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    record = models / "model.json"
    record.write_text(json.dumps({"classes": CLASSES}))  # an old model: no thresholds
    _write(tmp_path, [[0.2, 0.4, 0.6]], checkpoint=models / "model.pt")
    out = capsys.readouterr().out
    assert f"no decisions.csv: decisions need operating thresholds and {record} holds none" in out
    assert HOW in out and not (tmp_path / "out" / "decisions.csv").exists()
    # turned off on purpose (an empty dict): nothing to say
    _write(tmp_path, [[0.2, 0.4, 0.6]], checkpoint=models / "model.pt", thresholds={})
    assert "decisions need" not in capsys.readouterr().out
    # a class without validation positives: its default threshold is named where the decisions are written
    note = "only label 0 in the validation split: no ROC curve, threshold 0.5"
    record.write_text(json.dumps({"classes": CLASSES, "thresholds": {"A": 0.3, "B": 0.5, "No Finding": 0.4},
                                  "threshold_notes": {"B": note}}))
    _write(tmp_path, [[0.2, 0.4, 0.6]], checkpoint=models / "model.pt")
    out = capsys.readouterr().out
    assert f"operating thresholds that are a default, not chosen on data: B ({note})" in out
    assert (tmp_path / "out" / "decisions.csv").is_file()


def test_export_and_the_served_model_say_when_there_are_no_thresholds(tmp_path, capsys):
    from custom.deploy.export import bundle_configs
    from custom.serving.pyfunc import ChestXrayClassifier

    run = {"classes": CLASSES, "image_size": 16}
    inference, _ = bundle_configs(CONFIGS, run)
    out = capsys.readouterr().out
    assert "no decisions in the exported bundle: decisions need operating thresholds and the run record holds none" \
        in out and HOW in out
    note = "only label 0 in the validation split: no ROC curve, threshold 0.5"
    inference, _ = bundle_configs(CONFIGS, {**run, "thresholds": {"A": 0.3, "B": 0.5, "No Finding": 0.4},
                                            "threshold_notes": {"B": note}})
    assert inference["threshold_notes"] == {"B": note}  # travels with the thresholds to the served model
    assert f"default, not chosen on data: B ({note})" in capsys.readouterr().out

    torch.jit.script(torch.nn.Linear(3, 3)).save(str(tmp_path / "model.ts"))
    config = {"classes": CLASSES, "preprocessing": {"_target_": "Compose", "transforms": []},
              "postprocessing": {"_target_": "Compose", "transforms": []}, "thresholds": None}
    (tmp_path / "inference.json").write_text(json.dumps(config))
    context = SimpleNamespace(artifacts={"inference_config": str(tmp_path / "inference.json"),
                                         "model": str(tmp_path / "model.ts")})
    served = ChestXrayClassifier()
    served.load_context(context)
    err = capsys.readouterr().err
    assert served.thresholds is None
    assert "no <class>_positive columns: decisions need operating thresholds and the model's inference.json holds " \
           "none" in err and HOW in err
    (tmp_path / "inference.json").write_text(json.dumps({**config, **{k: inference[k] for k in
                                                                      ("thresholds", "threshold_notes")}}))
    served.load_context(context)
    assert served.thresholds == [0.3, 0.5, 0.4]
    assert f"default, not chosen on data: B ({note})" in capsys.readouterr().err


def _list(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("training", 8), ("validation", 6)):
        splits[split] = []
        for i in range(n):
            image = f"img/{split}_{i}.png"
            (tmp_path / "img").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / image)
            label = [i % 2, 0, 1 - i % 2]  # B: no positive anywhere
            splits[split].append({"image": image, "label": label, "patient": f"{split}{i}"})
    (tmp_path / "list.json").write_text(json.dumps({"classes": CLASSES, **splits}))
    return tmp_path / "list.json"


@pytest.mark.slow
def test_a_run_without_the_test_report_stores_thresholds_and_the_gate_chosen_on_validation(tmp_path, capsys):
    from custom.evaluation.metrics import operating_thresholds
    from custom.evaluation.report import predict

    path = _list(tmp_path)
    root = tmp_path / "bundle"
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(root),
                        mlflow=False, max_epochs=1, batch_size=4, test_and_deploy=False, image_size=32,
                        datalist={"_target_": "custom.DataList", "path": str(path)}, classes=CLASSES)
    wf.initialize()
    wf.run()
    wf.finalize()
    record = json.loads((root / "models" / "model.json").read_text())
    step = wf.parser.get_parsed_content("operating_thresholds")
    data = wf.parser.get_parsed_content("data")
    logits = predict(step.network, data.items("validation"), step.transform).astype(np.float64)
    expected, notes = operating_thresholds(1 / (1 + np.exp(-logits)), data.labels("validation"), CLASSES)
    assert record["thresholds"] == pytest.approx(expected, abs=1e-6)
    assert record["threshold_notes"] == notes and set(notes) == {"B"} and record["threshold_split"] == "validation"
    out = capsys.readouterr().out
    assert "default, not chosen on data: B (only label 0 in the validation split" in out
    written = str((root / "models" / "model.json").resolve())
    assert any("operating thresholds (validation)" in line and line.endswith(written) for line in out.splitlines())
    # the out-of-distribution gate too: beside the best model, its threshold accepting 99% of the validation images
    from custom.evaluation.ood import load_gate, predict_features

    gate = load_gate(root / "models" / "model.pt")
    assert gate is not None and gate.num_threshold == len(data.items("validation"))
    assert gate.num_fit == 2 * len(data.items("training"))  # each training image as taken and jittered
    distances = gate.distance(predict_features(step.network, data.items("validation"), step.transform)[1])
    k = int(np.ceil((len(distances) + 1) * 0.99))  # the split-conformal quantile (the largest, for this few)
    assert gate.threshold == pytest.approx(np.sort(distances)[min(k, len(distances)) - 1], rel=1e-4)
    gate_file = str((root / "models" / "model.ood.npz").resolve())
    assert any("out-of-distribution gate" in line and line.endswith(gate_file) for line in out.splitlines())


def test_the_test_table_names_the_split_its_thresholds_were_chosen_on(tmp_path):
    from monai.transforms import Compose, LoadImaged

    from custom.data import DataList
    from custom.data.transforms import ChestXrayToTensord
    from custom.evaluation import TestReport

    path = _list(tmp_path)
    doc = json.loads(path.read_text())
    doc["test"] = doc["validation"][:3]
    doc["validation"] = doc["validation"][3:]
    path.write_text(json.dumps(doc))
    data = DataList(path)
    transform = Compose([LoadImaged("image", reader="PILReader", image_only=True, ensure_channel_first=True),
                         ChestXrayToTensord("image", size=8)])
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    TestReport(network, data, transform, tmp_path / "eval", splits=["test", "validation"], num_resamples=0).run()
    test, val = ((tmp_path / "eval" / f"test_{s}.md").read_text().splitlines()[0] for s in ("test", "validation"))
    assert test.endswith("; operating thresholds chosen on the 'validation' split")
    assert val.endswith("; operating thresholds chosen on the 'validation' split (this one: sensitivity and "
                        "specificity are optimistic, measure them on another split)")
    # the same split named through another data list of the same file (first_run_nih.md's step 4)
    other = {"path": str(path), "splits": ["validation"], "name": "val_again"}
    TestReport(network, data, transform, tmp_path / "e3", test_lists=[other], num_resamples=0).run()
    title = (tmp_path / "e3" / "test_val_again.md").read_text().splitlines()[0]
    assert title.endswith("measure them on another split)")
    given = {"A": 0.5, "B": 0.5, "No Finding": 0.5}
    TestReport(network, data, transform, tmp_path / "e2", splits=["test"], num_resamples=0, thresholds=given).run()
    assert (tmp_path / "e2" / "test_test.md").read_text().splitlines()[0].endswith(
        "; operating thresholds given, not chosen on data")
    assert pd.read_csv(tmp_path / "e2" / "test_test.csv")["threshold"][0] == 0.5


def test_training_without_a_validation_split_says_that_decisions_will_lack_thresholds(tmp_path, capsys):
    from custom.evaluation import OperatingThresholds

    data = SimpleNamespace(splits=["training"], classes=CLASSES)
    step = OperatingThresholds(torch.nn.Linear(3, 3), data, None, tmp_path / "models")
    assert step.checkpoint == tmp_path / "models" / "model.pt" and step.run() is None
    out = capsys.readouterr().out
    assert out.startswith("operating thresholds not chosen (no validation split): inference and the served model "
                          "will give no decisions; to get them, choose them on the validation split with")
    assert HOW in out
    assert not (tmp_path / "models" / "model.json").exists()
