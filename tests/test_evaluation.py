"""Bootstrap AUC intervals, ROC figures and the multi-test-set evaluation."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from custom.data import DataList
from custom.evaluation.report import MEAN_ROW, TestReport, resolve_test_sets
from custom.evaluation.metrics import (bootstrap_auc, bootstrap_indices, expected_calibration_error,
                                      operating_thresholds, sensitivity_specificity, weighted_auc)


def _example(n=120, seed=7):
    """Scores with ties (rounded), a common, a rare and a constant class, and No Finding."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 4), dtype=int)
    labels[:, 0] = rng.random(n) < 0.4
    labels[:5, 1] = 1  # rare: absent from some resamples
    labels[:, 3] = labels[:, :2].sum(axis=1) == 0  # No Finding
    scores = np.round(labels * 0.8 + rng.normal(size=labels.shape), 1)  # rounding makes ties
    return scores, labels


def test_auc_equals_sklearn_with_ties():
    scores, labels = _example()
    auc = weighted_auc(scores, labels, np.ones((1, len(labels)), dtype=np.int32))[0]
    for c in (0, 1, 3):
        assert auc[c] == pytest.approx(roc_auc_score(labels[:, c], scores[:, c]), abs=1e-12)
    assert np.isnan(auc[2])  # a single label value: undefined


def test_bootstrap_matches_a_loop_over_sklearn_with_the_same_resamples():
    scores, labels = _example()
    indices = bootstrap_indices(len(labels), num_resamples=200, seed=3)
    result = bootstrap_auc(scores, labels, mean_over=[0, 1, 2], indices=indices, confidence=0.9)

    def auc_or_nan(y, s):
        return roc_auc_score(y, s) if 0 < y.sum() < len(y) else np.nan

    loop = np.array([[auc_or_nan(labels[i, c], scores[i, c]) for c in range(4)] for i in indices])
    loop[:, 2] = np.nan  # undefined on the full set, so undefined everywhere
    assert np.isnan(loop[:, 1]).any()  # the rare class is missing from some resamples
    np.testing.assert_allclose(result["resampled"], loop, atol=1e-12, equal_nan=True)
    for c in (0, 1, 3):
        kept = loop[~np.isnan(loop[:, c]), c]
        assert result["low"][c] == pytest.approx(np.quantile(kept, 0.05), abs=1e-12)
        assert result["high"][c] == pytest.approx(np.quantile(kept, 0.95), abs=1e-12)
        assert result["auc"][c] == pytest.approx(roc_auc_score(labels[:, c], scores[:, c]), abs=1e-12)
    # the mean over diseases 0-2: class 2 is undefined; class 1 enters where it is defined
    means = np.nanmean(loop[:, [0, 1]], axis=1)
    assert result["mean"] == pytest.approx(np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in (0, 1)]))
    assert result["mean_low"] == pytest.approx(np.quantile(means, 0.05), abs=1e-12)
    assert result["mean_high"] == pytest.approx(np.quantile(means, 0.95), abs=1e-12)
    assert result["mean_low"] < result["mean"] < result["mean_high"]


def test_bootstrap_is_seeded_and_needs_valid_indices():
    scores, labels = _example()
    a = bootstrap_auc(scores, labels, num_resamples=50, seed=1)
    b = bootstrap_auc(scores, labels, num_resamples=50, seed=1)
    c = bootstrap_auc(scores, labels, num_resamples=50, seed=2)
    assert np.array_equal(a["resampled"], b["resampled"], equal_nan=True)
    assert not np.array_equal(a["resampled"], c["resampled"], equal_nan=True)
    with pytest.raises(ValueError, match="resample indices"):
        bootstrap_auc(scores, labels, indices=np.array([[0, len(labels)]]))


# ----------------------------------------------------------------------------------------------
# operating thresholds and calibration
# ----------------------------------------------------------------------------------------------


def test_threshold_is_the_roc_point_closest_to_the_top_left_corner():
    # positives 0.6, 0.7, 0.9, 0.25; negatives 0.1, 0.2, 0.3, 0.5. Cuts and their (fpr, tpr), distance^2 to (0, 1):
    # 0.9 (0, 1/4) 0.5625; 0.7 (0, 1/2) 0.25; 0.6 (0, 3/4) 0.0625; 0.5 (1/4, 3/4) 0.125; 0.3 (1/2, 3/4) 0.3125;
    # 0.25 (1/2, 1) 0.25; 0.1 (1, 1) 1. The closest: 0.6.
    probs = np.array([0.6, 0.7, 0.9, 0.25, 0.1, 0.2, 0.3, 0.5])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    thr, notes = operating_thresholds(probs[:, None], labels[:, None], ["A"])
    assert thr == {"A": pytest.approx(0.6)} and notes == {}
    sens, spec = sensitivity_specificity(probs[:, None], labels[:, None], [thr["A"]])
    assert sens[0] == pytest.approx(0.75) and spec[0] == pytest.approx(1.0)


def test_threshold_trades_sensitivity_and_specificity_by_distance_not_by_youden():
    # positives 0.9, 0.8, 0.4 ; negatives 0.7, 0.3, 0.2, 0.1, 0.05
    # cut 0.8: (fpr 0, tpr 2/3) distance^2 0.111 ; cut 0.4: (fpr 1/5, tpr 1) distance^2 0.04 -> 0.4
    probs = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    thr, _ = operating_thresholds(probs[:, None], labels[:, None], ["A"])
    assert thr["A"] == pytest.approx(0.4)


def test_a_class_with_a_single_label_value_gets_threshold_one_half_and_a_note():
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3]])
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    thr, notes = operating_thresholds(probs, labels, ["A", "B"])
    assert thr["B"] == 0.5 and "only label 0" in notes["B"] and "A" not in notes
    assert thr["A"] == pytest.approx(0.7)  # both positives (0.9, 0.7) above the negative 0.1


def test_sensitivity_and_specificity_count_probability_equal_to_the_threshold_as_positive():
    probs = np.array([[0.5, 0.2], [0.49, 0.9], [0.8, 0.4], [0.1, 0.6]])
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    sens, spec = sensitivity_specificity(probs, labels, [0.5, 0.5])
    # class 0: positives 0.5 (called) and 0.49 (missed): 1/2; negatives 0.8 (called), 0.1: 1/2
    # class 1: one positive 0.9 (called): 1; negatives 0.2, 0.4 (not called), 0.6 (called): 2/3
    assert np.allclose(sens, [0.5, 1.0]) and np.allclose(spec, [0.5, 2 / 3])
    sens, spec = sensitivity_specificity(probs[:, :1], np.zeros((4, 1)), [0.5])
    assert np.isnan(sens[0]) and spec[0] == pytest.approx(0.5)


def test_expected_calibration_error_by_hand():
    # perfectly calibrated: in bin [0.2, 0.3) every probability is 0.25 and 1 of 4 is positive;
    # in bin [0.7, 0.8) 0.75 and 3 of 4
    probs = np.array([0.25] * 4 + [0.75] * 4)
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(probs[:, None], labels[:, None])[0] == pytest.approx(0.0)
    # over-confident: 0.9 with half positive (gap 0.4, 6 of 10 images), 0.1 with none positive (gap 0.1, 4 of 10)
    probs = np.array([0.9] * 6 + [0.1] * 4)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    ece = expected_calibration_error(np.c_[probs, probs], np.c_[labels, 1 - labels])
    assert ece[0] == pytest.approx(0.6 * 0.4 + 0.4 * 0.1)
    # second class: 0.9 with half positive again (0.4), 0.1 with all positive (0.9)
    assert ece[1] == pytest.approx(0.6 * 0.4 + 0.4 * 0.9)
    # the bins are equal-width: 0.05 and 0.09 share bin 0 (mean 0.07, 1 of 2 positive: gap 0.43); 1.0 is in the last
    ece = expected_calibration_error(np.array([[0.05], [0.09], [1.0]]), np.array([[1], [0], [1]]))
    assert ece[0] == pytest.approx(2 / 3 * 0.43)


# ----------------------------------------------------------------------------------------------
# test sets and the report
# ----------------------------------------------------------------------------------------------

CLASSES = ["Atelectasis", "Effusion", "No Finding"]


def _write_list(folder, name, splits, classes=CLASSES, seed=0):
    """A data list with tiny PNGs whose brightness carries Atelectasis (where the list has it)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"classes": classes}
    for split, n in splits.items():
        items = []
        for i in range(n):
            label = [int(rng.random() < 0.5) for _ in classes]
            value = (
                60
                + 120 * (label[classes.index("Atelectasis")] if "Atelectasis" in classes else 0)
                + int(rng.integers(0, 60))
            )
            path = f"{name}_{split}_{i}.png"
            Image.fromarray(np.full((16, 16), value, np.uint8)).save(folder / path)
            items.append({"image": path, "label": label})
        data[split] = items
    (folder / f"{name}.json").write_text(json.dumps(data))
    return folder / f"{name}.json"


def test_test_sets_default_to_the_test_splits_and_name_other_lists(tmp_path):
    train = DataList(
        _write_list(tmp_path / "a", "train", {"training": 4, "validation": 4, "test": 6, "test_shifted": 6})
    )
    assert [(t.name, t.split) for t in resolve_test_sets(None, train)] == [
        ("test", "test"),
        ("test_shifted", "test_shifted"),
    ]
    openi = _write_list(tmp_path / "b", "openi", {"test": 6})  # a test-only list
    pdc = _write_list(tmp_path / "c", "padchest", {"test": 5, "other": 5})
    sets = resolve_test_sets([train, str(openi), {"path": str(pdc), "splits": ["other"], "name": "pdc"}], train)
    assert [(t.name, t.split) for t in sets] == [
        ("test", "test"),
        ("test_shifted", "test_shifted"),
        ("openi", "test"),
        ("pdc", "other"),
    ]
    sets = resolve_test_sets({"OPI": str(openi), "PDC": str(pdc)}, train)
    assert [t.name for t in sets] == ["OPI", "PDC_test", "PDC_other"]
    with pytest.raises(ValueError, match="named"):
        resolve_test_sets([str(openi), str(openi)], train)
    with pytest.raises(ValueError, match="needs a 'path'"):
        resolve_test_sets([{"file": str(openi)}], train)
    with pytest.raises(KeyError, match="no split 'nope'"):
        resolve_test_sets([{"path": str(pdc), "splits": ["nope"]}], train)


class _FirstChannel(torch.nn.Module):
    """A 'network' whose logits are the mean brightness (class 0) and fixed noise (others)."""

    def __init__(self, num_classes):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.num_classes = num_classes

    def forward(self, x):
        g = torch.Generator().manual_seed(len(x))
        noise = torch.randn(len(x), self.num_classes, generator=g)
        noise[:, 0] = self.w * x.mean(dim=(1, 2, 3))
        return noise


def test_report_writes_tables_with_intervals_and_roc_figures_per_test_set(tmp_path):
    from custom.training.tracking import MLflowTracker
    from custom.data.transforms import ChestXrayToTensord
    from monai.transforms import Compose, LoadImaged

    train = DataList(_write_list(tmp_path / "a", "train", {"training": 4, "validation": 4, "test": 40}))
    subset = _write_list(
        tmp_path / "b", "openi", {"test": 30}, classes=["No Finding", "Atelectasis"], seed=1
    )  # other order, a subset
    transform = Compose(
        [
            LoadImaged("image", reader="PILReader", image_only=True, ensure_channel_first=True),
            ChestXrayToTensord("image", size=16),
        ]
    )
    tracker = MLflowTracker(output_dir=str(tmp_path / "eval"), experiment_name="eval")
    report = TestReport(
        _FirstChannel(3),
        train,
        transform,
        tmp_path / "eval",
        test_lists=[train, str(subset)],
        num_resamples=100,
        tracker=tracker,
    )
    results = report.run()
    assert set(results) == {"test", "openi"}
    for name, datalist in (("test", train), ("openi", DataList(subset, required_splits=()))):
        table = pd.read_csv(tmp_path / "eval" / f"test_{name}.csv")
        assert list(table["class"]) == datalist.classes + [MEAN_ROW]
        assert (tmp_path / "eval" / f"test_{name}_roc.png").stat().st_size > 1000
        labels = datalist.labels("test")
        row = table[table["class"] == "Atelectasis"].iloc[0]
        # brightness separates Atelectasis perfectly in these images
        assert row["auc"] == pytest.approx(1.0) and row["ci_low"] == pytest.approx(1.0)
        assert row["positives"] == labels[:, datalist.classes.index("Atelectasis")].sum()
        nf = table[table["class"] == "No Finding"].iloc[0]
        assert not nf["in_mean"] and nf["ci_low"] <= nf["auc"] <= nf["ci_high"]
        mean = table.iloc[-1]
        assert mean["auc"] == pytest.approx(table[table["in_mean"]]["auc"].mean())
        md = (tmp_path / "eval" / f"test_{name}.md").read_text()
        assert "95% bootstrap CI, 100 resamples" in md and "Reported apart" in md
        assert md.index(MEAN_ROW) < md.index("No Finding")
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "eval" / "mlruns.db"))
    (run,) = mlflow.search_runs(experiment_names=["eval"], output_format="list")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "test")}
    assert {
        "test/test_openi.csv",
        "test/test_openi.md",
        "test/test_openi_roc.png",
        "test/test_test_roc.png",
    } <= artifacts
    assert run.data.metrics["test_openi_mean_auc_ci_low"] <= run.data.metrics["test_openi_mean_auc"]


def test_report_names_a_test_class_the_model_does_not_have(tmp_path):
    train = DataList(_write_list(tmp_path / "a", "train", {"training": 4, "validation": 4}))
    other = _write_list(tmp_path / "b", "google", {"test": 4}, classes=["Fracture", "No Finding"])
    report = TestReport(_FirstChannel(3), train, lambda d: d, tmp_path / "eval", test_lists=[str(other)])
    with pytest.raises(ValueError, match=r"google.json: classes \['Fracture'\] are not outputs of the model"):
        report.run()


def test_evaluate_config_runs_several_test_lists_in_one_run(tmp_path):
    """evaluate.json: the checkpoint on the training list's test splits and on another list, in one run."""
    from monai.bundle import ConfigWorkflow
    from monai.networks.nets import DenseNet121

    from conftest import CONFIGS

    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(
        DenseNet121(spatial_dims=2, in_channels=3, out_channels=14).state_dict(), tmp_path / "models" / "model.pt"
    )
    other = _write_list(tmp_path / "other", "openi", {"test": 12}, classes=["Atelectasis", "Effusion", "No Finding"])
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="eval",
        bundle_root=str(tmp_path),
        mlflow=False,
        bootstrap_resamples=50,
        test_lists=["@data", {"path": str(other), "name": "OPI"}],
        **{
            "datalist#root": str(tmp_path / "data"),
            "datalist#num_training": 32,
            "datalist#num_validation": 16,
            "datalist#num_test": 40,
            "datalist#num_test_shifted": 30,
        },
    )
    wf.initialize()
    wf.run()
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.glob("test_*.csv")) == ["test_OPI.csv", "test_test.csv", "test_test_shifted.csv"]
    assert len(list(out.glob("test_*_roc.png"))) == 3
    assert "50 resamples" in (out / "test_OPI.md").read_text()
    assert len(pd.read_csv(out / "test_test_shifted.csv")) == 15 and len(pd.read_csv(out / "test_OPI.csv")) == 4


def test_report_chooses_thresholds_on_validation_stores_them_and_reports_the_operating_point(tmp_path):
    from custom.data.transforms import ChestXrayToTensord
    from monai.transforms import Compose, LoadImaged

    train = DataList(_write_list(tmp_path / "a", "train", {"training": 4, "validation": 30, "test": 40}))
    transform = Compose([LoadImaged("image", reader="PILReader", image_only=True, ensure_channel_first=True),
                         ChestXrayToTensord("image", size=16)])
    models = tmp_path / "models"
    models.mkdir()
    network = _FirstChannel(3)
    torch.save(network.state_dict(), models / "model.pt")
    (models / "model.json").write_text(json.dumps({"classes": CLASSES, "image_size": 16}))
    report = TestReport(network, train, transform, tmp_path / "eval", checkpoint=models, num_resamples=0)
    table = report.run()["test"]

    # the thresholds are those of the rule on the validation probabilities, and reach the run record
    def probs(split):
        batch = torch.stack([transform(dict(d))["image"] for d in train.items(split)])
        return torch.sigmoid(network(batch)).detach().numpy().astype(np.float64)

    expected, _ = operating_thresholds(probs("validation"), train.labels("validation"), CLASSES)
    record = json.loads((models / "model.json").read_text())
    assert record["classes"] == CLASSES  # the rest of the record is kept
    assert record["thresholds"] == pytest.approx(expected) and report.thresholds == pytest.approx(expected)
    assert "closest to (0, 1)" in record["threshold_rule"]
    # brightness separates Atelectasis: its threshold lies between the validation negatives and positives
    val, val_labels = probs("validation")[:, 0], train.labels("validation")[:, 0].astype(bool)
    assert val[~val_labels].max() < record["thresholds"]["Atelectasis"] <= val[val_labels].min()

    # the test table: sensitivity and specificity at those thresholds, and the ECE, per class and over the diseases
    test, labels = probs("test"), train.labels("test")
    cut = np.array([expected[c] for c in CLASSES])
    sens, spec = sensitivity_specificity(test, labels, cut)
    ece = expected_calibration_error(test, labels)
    assert np.allclose(table["threshold"][:3], cut)
    assert np.allclose(table["sensitivity"][:3], sens) and np.allclose(table["specificity"][:3], spec)
    assert np.allclose(table["ece"][:3], ece, atol=1e-6)
    assert table["specificity"][0] == 1.0  # no Atelectasis negative is as bright as a positive
    mean = table.iloc[-1]
    assert mean["class"] == MEAN_ROW and mean["ece"] == pytest.approx(ece[:2].mean(), abs=1e-6)  # No Finding apart
    assert mean["sensitivity"] == pytest.approx(sens[:2].mean())
    assert list(pd.read_csv(tmp_path / "eval" / "test_test.csv").columns) == [
        "class", "positives", "auc", "in_mean", "threshold", "sensitivity", "specificity", "ece"]
    assert "| sensitivity | specificity | ece |" in (tmp_path / "eval" / "test_test.md").read_text()
    assert (tmp_path / "eval" / "test_test_reliability.png").stat().st_size > 1000

    # "record": evaluation with the stored thresholds (here changed by hand) instead of choosing again
    record["thresholds"]["Atelectasis"] = 0.999
    (models / "model.json").write_text(json.dumps(record))
    again = TestReport(network, train, transform, tmp_path / "eval2", checkpoint=models, num_resamples=0,
                       thresholds="record").run()["test"]
    assert again["threshold"][0] == 0.999 and again["sensitivity"][0] == 0.0
