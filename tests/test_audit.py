"""Label audit: score formulas, the reference rules, error messages, and an end-to-end ranking check."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from custom.tools.audit import (audit, audit_benchmark, benchmark_metrics, calibrate_logits, confident_learning,
                               detection_metrics, loss_score, memory_logits, memory_score, read_checkpoint)
from custom.data.synthetic import split_noise_specs
from custom.training.checkpoints import find_checkpoint
from custom.data import DataList
from custom.nvum.memory import NVUMMemory

TINY = {
    "datalist#num_training": 160,
    "datalist#num_validation": 32,
    "datalist#num_test": 32,
    "datalist#num_test_shifted": 16,
    "max_epochs": 3,
    "batch_size": 32,
}


def test_memory_logits_recover_the_logits_the_memory_averaged():
    """After K epoch updates with the same logits z, t = (1 - beta^K)(z - log pi): m gives z back."""
    g = torch.Generator().manual_seed(0)
    prior = torch.tensor([0.02, 0.3, 0.6])
    z = torch.randn(5, 3, generator=g) * 3
    for beta, epochs in ((0.9, 1), (0.9, 6), (0.5, 3)):
        mem = NVUMMemory(5, prior, momentum=beta)
        for _ in range(epochs):
            mem.update(torch.arange(5), z)
        m = memory_logits(mem.values, mem.log_prior, epochs, beta)
        assert np.allclose(m, z.numpy(), atol=1e-5)
    plain = NVUMMemory(5, prior, momentum=0.9, unbiased=False)
    plain.update(torch.arange(5), z)
    assert np.allclose(memory_logits(plain.values, plain.log_prior, 1, 0.9, unbiased=False), z.numpy(), atol=1e-5)


def test_memory_score_is_the_memory_probability_of_the_other_label():
    m = np.array([[4.0, -4.0, 0.0]])
    assert np.allclose(memory_score(m, np.array([[1, 1, 1]])), 1 / (1 + np.exp(m)))  # y = 1: 1 - sigmoid(m)
    assert np.allclose(memory_score(m, np.array([[0, 0, 0]])), 1 / (1 + np.exp(-m)))  # y = 0: sigmoid(m)
    # the loss ranking is the BCE of the logits against the given label
    z, y = np.array([[2.0, -1.0]]), np.array([[0, 0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y, dtype=torch.float64),
                                                               reduction="none")
    assert np.allclose(loss_score(z, y), bce.numpy())


def test_calibration_matches_each_class_prevalence_and_keeps_the_order_within_a_class():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 3)) * 2 + np.array([3.0, -1.0, 0.0])
    labels = (rng.random((400, 3)) < np.array([0.05, 0.5, 0.3])).astype(int)
    out = calibrate_logits(logits, labels)
    assert np.allclose((1 / (1 + np.exp(-out))).mean(axis=0), labels.mean(axis=0), atol=1e-6)
    shift = out - logits
    assert np.allclose(shift, shift[0]) and not np.allclose(shift[0], 0)  # one offset per class


def test_confident_learning_thresholds_flags_and_margins():
    p = np.array([[0.9, 0.1], [0.7, 0.2], [0.2, 0.6], [0.6, 0.1], [0.1, 0.3]])
    y = np.array([[1, 0], [1, 0], [1, 1], [0, 0], [0, 1]])
    cl = confident_learning(p, y)
    assert np.allclose(cl["thr_pos"], [0.6, 0.45]) and np.allclose(cl["thr_neg"], [0.35, 0.4 / 3])
    # class 0: the positive at 0.2 is below the negatives' mean 0.35; the negative at 0.6 reaches the positives' 0.6
    assert cl["flagged"][:, 0].tolist() == [False, False, True, True, False]
    assert np.isclose(cl["margin"][2, 0], 0.35 - 0.2) and np.isclose(cl["margin"][3, 0],
                                                                     0.0) and np.isclose(cl["margin"][0, 0], 0.35 - 0.9)
    # class 1: no prediction crosses
    assert not cl["flagged"][:, 1].any()
    # a class without given positives flags none of its labels
    cl = confident_learning(np.array([[0.9], [0.1]]), np.array([[0], [0]]))
    assert not cl["flagged"].any() and np.isnan(cl["thr_pos"][0])


def test_detection_metrics_match_scikit_learn_and_count_the_top_k():
    rng = np.random.default_rng(0)
    wrong = rng.random(500) < 0.2
    scores = rng.normal(size=500) + wrong
    r = detection_metrics(scores, wrong, ks=(10, 50))
    assert np.isclose(r["auroc"], roc_auc_score(wrong, scores))
    order = np.argsort(-scores)
    assert np.isclose(r["precision@10"], wrong[order[:10]].mean()) and np.isclose(r["precision@50"],
                                                                                  wrong[order[:50]].mean())
    assert np.isclose(r["precision@n_wrong"], wrong[order[: wrong.sum()]].mean()) and r["n_wrong"] == wrong.sum()
    perfect = detection_metrics(wrong.astype(float), wrong, ks=(10,))
    assert perfect["auroc"] == 1.0 and perfect["precision@10"] == 1.0 and perfect["precision@n_wrong"] == 1.0
    # the confident-learning rule scores labels it never flags -inf (a class without given positives): same ranking
    ranked = rng.normal(size=500)
    with_inf = np.where(np.arange(500) < 50, -np.inf, ranked)
    lowest = np.where(np.arange(500) < 50, ranked.min() - 5, ranked)
    assert detection_metrics(with_inf, wrong) == detection_metrics(lowest, wrong)


def test_noise_specs_split_on_commas_before_a_letter_only():
    assert split_noise_specs("symmetric:0.2,symmetric:0.4") == ["symmetric:0.2", "symmetric:0.4"]
    assert split_noise_specs("bomd:0.2,0.2, report") == ["bomd:0.2,0.2", "report"]
    with pytest.raises(ValueError, match="unknown noise spec"):
        split_noise_specs("symmetric:0.2,gaussian")


def test_checkpoint_without_memory_is_refused_with_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nothing.pt"):
        read_checkpoint(tmp_path / "nothing.pt")
    bare = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bare)
    with pytest.raises(ValueError, match=f"checkpoint {bare} holds no NVUM memory"):
        read_checkpoint(bare)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The benchmark command on a small synthetic set with 40% symmetric label noise: one short
    NVUM training through the bundle's workflow, then the audit of its resume checkpoint."""
    root = tmp_path_factory.mktemp("audit")
    overrides = {"datalist#root": str(root / "data"), **TINY}
    result = audit_benchmark("symmetric:0.4", root / "bench", figure=str(root / "figure.png"), **overrides)
    run = root / "bench" / "symmetric04"
    return {"checkpoint": find_checkpoint(True, run / "models"), "datalist": DataList(root / "data" / "datalist.json"),
            "root": root, "run": run, "result": result, "overrides": overrides}


@pytest.mark.slow
def test_audit_ranks_flipped_labels_above_clean_ones(tiny_run, tmp_path):
    out = tmp_path / "audit.csv"
    table = audit(tiny_run["checkpoint"], tiny_run["datalist"].path, output=out, quiet=True)
    written = pd.read_csv(out)
    n, c = TINY["datalist#num_training"], 14
    assert len(written) == n * c and written["rank"].tolist() == list(range(1, n * c + 1))
    assert (np.diff(written["score"]) <= 1e-9).all()  # most suspicious first
    # rows carry the image, class and the label given in the data list
    dl = tiny_run["datalist"]
    given = dl.labels("training")
    classes = dl.classes
    images = [it["image"] for it in dl.items("training")]
    for row in written.sample(20, random_state=0).to_dict("records"):
        assert row["image"] == images[row["index"]] and row["given_label"] == given[row["index"],
                                                                                    classes.index(row["class"])]
    # the generator's flipped labels are ranked above the clean ones, well beyond chance (a random
    # score gives 0.5, an inverted one about 0.1); after 3 short epochs the memory knows little of
    # the images, most of the separation comes from its class offsets: under 40% flips most given
    # positives are wrong, and the calibrated memory puts them above the given negatives
    truth = dl.labels("training", key="clean_label")
    wrong = written["given_label"].to_numpy() != truth[written["index"], [classes.index(k) for k in written["class"]]]
    assert wrong.mean() > 0.3
    assert roc_auc_score(wrong, written["score"]) > 0.7
    by_class = pd.read_csv(tmp_path / "audit_by_class.csv")
    assert by_class["class"].tolist() == classes and by_class["wrong"].sum() == wrong.sum()
    assert by_class["given_positives"].tolist() == given.sum(axis=0).tolist()
    metrics = {r["ranking"]: r for r in benchmark_metrics(table)}
    assert np.isclose(metrics["memory (audit score)"]["auroc"], roc_auc_score(wrong, written["score"]))
    assert np.isclose(metrics["loss (final model)"]["auroc"], roc_auc_score(wrong, written["loss"]))


@pytest.mark.slow
def test_audit_refuses_a_data_list_of_another_size(tiny_run, tmp_path):
    source = tiny_run["datalist"].path
    raw = json.loads(source.read_text())
    raw["training"] = raw["training"][:50]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(raw))
    n = TINY["datalist#num_training"]
    message = f"data list {other} has 50 training images x 14 classes but the memory in .* has {n} x 14"
    with pytest.raises(ValueError, match=message):
        audit(tiny_run["checkpoint"], other, output=tmp_path / "a.csv", dataset_dir=source.parent, quiet=True)


@pytest.mark.slow
def test_benchmark_writes_the_table_and_figure_and_reuses_a_finished_run(tiny_run, capsys):
    bench = tiny_run["root"] / "bench"
    result = tiny_run["result"]
    assert list(result["ranking"]) == ["memory (audit score)", "memory, not calibrated", "memory + final model",
                                       "loss (final model)", "confident-learning rule", "label frequency only"]
    assert (result["noise"] == "symmetric:0.4").all() and (result["n"] == TINY["datalist#num_training"] * 14).all()
    # the table's memory AUROC is the one of the audit file written for that run
    table = pd.read_csv(tiny_run["run"] / "audit.csv")
    assert np.isclose(result["auroc"].iloc[0], roc_auc_score(table["wrong"], table["score"]))
    assert np.allclose(pd.read_csv(bench / "audit_benchmark.csv")["auroc"], result["auroc"], atol=1e-4)
    png = (bench / "audit_scores.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tiny_run["root"] / "figure.png").read_bytes() == png
    # same settings: the finished training run is reused, not repeated
    checkpoint = tiny_run["checkpoint"]
    before = checkpoint.stat().st_mtime_ns
    again = audit_benchmark("symmetric:0.4", bench, figure="", **tiny_run["overrides"])
    assert checkpoint.stat().st_mtime_ns == before and "reusing the training run" in capsys.readouterr().out
    assert np.allclose(again["auroc"], result["auroc"])


@pytest.mark.slow
def test_audit_command_line(tiny_run, tmp_path, monkeypatch):
    from custom.tools import cli

    out = tmp_path / "cli.csv"
    monkeypatch.setattr("sys.argv", ["custom.cli", "audit", "--checkpoint", str(tiny_run["checkpoint"]), "--datalist",
                                     str(tiny_run["datalist"].path), "--output", str(out), "--quiet", "true"])
    cli.main()
    assert len(pd.read_csv(out)) == TINY["datalist#num_training"] * 14 and (tmp_path / "cli_by_class.csv").is_file()


@pytest.mark.slow
def test_audit_as_the_readme_writes_it_finds_everything_in_the_checkpoint(tmp_path):
    """Train with sizes other than the defaults, then audit with only --checkpoint and --output: the
    data list, its folder, the input size and the network come from the run record; nothing is generated."""
    import os
    import subprocess
    import sys

    from conftest import CONFIGS, ROOT

    sizes = {"datalist#num_training": 40, "datalist#num_validation": 24, "datalist#num_test": 8,
             "datalist#num_test_shifted": 8, "image_size": 40, "max_epochs": 2, "batch_size": 20}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NVUM_CACHE_DIR=str(tmp_path / "training_cache"))
    train = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
             "--bundle_root", str(tmp_path / "run"), "--mlflow", "false", "--test_and_deploy", "false"]
    for key, value in sizes.items():
        train += [f"--{key}", str(value)]
    done = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    checkpoint, output = tmp_path / "run" / "models" / "checkpoint_epoch=2.pt", tmp_path / "audit.csv"
    env["NVUM_CACHE_DIR"] = str(tmp_path / "audit_cache")  # an audit that generated a data set would write here
    audit_cmd = [sys.executable, "-m", "custom.cli", "audit", "--checkpoint", str(checkpoint), "--output", str(output)]
    done = subprocess.run(audit_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    datalist = next((tmp_path / "training_cache").glob("synthetic-*/datalist.json"))
    assert (f"checkpoint {checkpoint}: 2 epoch(s) of DenseNet121 at 40 px, memory momentum 0.9; auditing data list "
            f"{datalist} (images in {datalist.parent}; from the run record): 40 training images x 14 classes"
            ) in done.stdout
    table = pd.read_csv(output)
    assert len(table) == 40 * 14 and table["wrong"].dtype == bool  # the synthetic list's true labels were found
    assert not (tmp_path / "audit_cache").exists()
