"""Every bundle config, run through the MONAI bundle API on tiny synthetic data."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from conftest import CONFIGS

TINY = {
    "datalist#num_training": 96,
    "datalist#num_validation": 64,
    "datalist#num_test": 96,
    "datalist#num_test_shifted": 64,
    "max_epochs": 2,
    "batch_size": 32,
}


def _workflow(config_files, workflow_type, **override):
    files = [str(CONFIGS / f) for f in config_files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )


def _messages(exc):
    """The messages of an exception and of its causes (MONAI wraps component errors)."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def _run(wf):
    wf.initialize()
    out = wf.run()
    wf.finalize()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny NVUM training run (2 epochs); returns its folders and workflow."""
    root = tmp_path_factory.mktemp("bundle")
    data = tmp_path_factory.mktemp("data") / "synthetic"
    wf = _workflow(["train.json"], "train", bundle_root=str(root), **{"datalist#root": str(data)}, **TINY)
    _run(wf)
    return {"root": root, "data": data, "wf": wf}


def test_train_config_has_monai_train_properties(tmp_path):
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), mlflow=False,
                   **{"datalist#root": str(tmp_path / "data")}, **TINY)
    wf.initialize()
    assert wf.check_properties() in (None, [])


def test_every_handler_of_the_trainer_is_listed_in_train_json(tmp_path):
    """The trainer attaches nothing of its own: what runs is train#handlers, in the order listed (the
    memory updater after the teacher, the checkpoints after validation, the tracker last)."""
    from ignite.engine import Events
    from ignite.handlers import ProgressBar
    from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler

    import custom

    bare = custom.NVUMTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[{}],
                              network=torch.nn.Linear(1, 1), optimizer=None, loss_function=None, decollate=False)
    assert not any(bare._event_handlers.values())  # no hidden handler (MONAI adds none either with these settings)
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), **{"datalist#root": str(tmp_path / "data")},
                   **TINY)
    wf.initialize()
    handlers = wf.parser.get_parsed_content("train#handlers")
    assert [type(h) for h in handlers] == [
        custom.EpochReseed, custom.CheckpointLoader, custom.RunSummary, custom.EMATeacher, custom.MemoryUpdater,
        custom.LossAverages, LrScheduleHandler, ProgressBar, ValidationHandler, custom.CheckpointSaver, StatsHandler,
        custom.MLflowTracker]
    assert [type(h) for h in wf.parser.get_parsed_content("validate#handlers")] == [
        custom.BestModelSaver, StatsHandler, custom.MLflowTracker]
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.has_event_handler(handlers[0], Events.EPOCH_STARTED)
    assert handlers[4].enabled and handlers[4].teacher is handlers[3]  # the updater of the loss's memory
    assert wf.parser.get_parsed_content("run_record") is handlers[9].save_dict["run_record"]  # one record


def test_inference_config_has_monai_infer_properties(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    wf = _workflow(["inference.json"], "infer", input_path=str(tmp_path))
    wf.initialize()
    assert wf.check_properties() in (None, [])


@pytest.mark.slow
def test_training_writes_best_and_resume_checkpoints_with_the_memory(trained):
    models = trained["root"] / "models"
    best = torch.load(models / "model.pt", weights_only=True)
    assert "class_layers.out.weight" in best  # a bare state dict of the deployable network
    (resume,) = sorted(models.glob("checkpoint_epoch=*.pt"))
    state = torch.load(resume, weights_only=True)
    assert {"model", "memory", "memory_updater", "optimizer", "lr_scheduler", "trainer", "validation",
            "run_record"} <= set(state)
    values = state["memory"]["values"]
    assert values.shape == (TINY["datalist#num_training"], 14) and values.dtype == torch.float32
    # after 2 epochs every row has had 2 updates (1 - 0.9^2 of the way to its targets): no row is still zero
    assert (values.abs().sum(dim=1) > 0).all()
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"] == 2 * 96 // 32


@pytest.mark.slow
def test_training_writes_test_tables_and_an_mlflow_run(trained):
    eval_dir = trained["root"] / "eval"
    for split in ("test", "test_shifted"):
        table = pd.read_csv(eval_dir / f"test_{split}.csv")
        assert list(table["class"])[-1] == "Mean (diseases)" and len(table) == 15
        diseases = table["auc"].iloc[:13].dropna()
        assert np.isclose(table["auc"].iloc[-1], diseases.mean())
    mlflow.set_tracking_uri("sqlite:///" + str(eval_dir / "mlruns.db"))
    runs = mlflow.search_runs(experiment_names=["nvum"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["loss"] == "nvum" and run.data.params["memory_schedule"] == "epoch"
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "val_mean_auc")) == 2
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert "test_test_mean_auc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert "test/test_test.csv" in artifacts


@pytest.mark.slow
def test_training_stores_operating_thresholds_in_the_run_record_and_reports_them(trained):
    from custom.evaluation.metrics import operating_thresholds
    from custom.evaluation.report import predict

    root, wf = trained["root"], trained["wf"]
    record = json.loads((root / "models" / "model.json").read_text())
    classes = record["classes"]
    assert len(classes) == 14 and set(record["thresholds"]) == set(classes)
    # they are the rule's on the validation split, with the best model
    report = wf.parser.get_parsed_content("test_report")
    data = wf.parser.get_parsed_content("data")
    logits = predict(report.network, data.items("validation"), report.transform)
    expected, notes = operating_thresholds(1 / (1 + np.exp(-logits.astype(np.float64))), data.labels("validation"),
                                           classes)
    assert record["thresholds"] == pytest.approx(expected, abs=1e-6)
    assert record["threshold_notes"] == notes
    for split in ("test", "test_shifted"):
        table = pd.read_csv(root / "eval" / f"test_{split}.csv")
        assert {"threshold", "sensitivity", "specificity", "ece"} <= set(table.columns)
        assert np.allclose(table["threshold"][:14], [expected[c] for c in classes])
        assert ((table["ece"] >= 0) & (table["ece"] <= 1)).all()
        assert (root / "eval" / f"test_{split}_reliability.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_config_reproduces_the_training_test_table(trained, capsys):
    root = trained["root"]
    before = pd.read_csv(root / "eval" / "test_test.csv")
    wf = _workflow(["train.json", "evaluate.json"], "eval", bundle_root=str(root), output_dir=str(root / "eval2"),
                   mlflow=False, **{"datalist#root": str(trained["data"])}, **TINY)
    _run(wf)
    after = pd.read_csv(root / "eval2" / "test_test.csv")
    assert np.allclose(before["auc"], after["auc"], equal_nan=True)
    out = capsys.readouterr().out
    assert f"evaluating checkpoint {(root / 'models' / 'model.pt').resolve()} (written " in out  # the weights loaded
    written = out.split("\nwritten:\n", 1)[1].splitlines()  # and, last, where each file it wrote is
    expected = [str((root / "eval2" / f"test_{s}{e}").resolve())
                for s in ("test", "test_shifted") for e in (".csv", ".md", "_roc.png", "_reliability.png")]
    expected += [str((root / "eval2" / name).resolve()) for name in ("ood.csv", "ood.md")]  # the gate's table
    assert [line.split()[-1] for line in written] == expected


@pytest.mark.slow
def test_training_ends_by_listing_every_file_it_wrote(trained):
    root, files = trained["root"], dict(trained["wf"].parser.get_parsed_content("run_summary").files())
    models, eval_dir = (root / "models").resolve(), (root / "eval").resolve()
    assert files["best network"] == str(models / "model.pt") and files["its run record"] == str(models / "model.json")
    assert files["operating thresholds (validation)"] == str(models / "model.json")
    assert files["resume checkpoint (audit it)"] == str(models / "checkpoint_epoch=2.pt")
    assert files["test table 'test_shifted'"] == str(eval_dir / "test_test_shifted.csv")
    assert files["ROC figure 'test'"] == str(eval_dir / "test_test_roc.png")
    assert files["TorchScript model"] == str(models / "model.ts")
    assert files["deployable bundle"] == str(models / "nvum_cxr_classification.zip")
    assert files["registered MLflow model"] == "models:/nvum-chestxray/1"
    assert files["MLflow run"].endswith(f"in sqlite:///{eval_dir}/mlruns.db")
    assert all(Path(path).is_file() for what, path in files.items() if not what.startswith(("MLflow", "registered")))


@pytest.mark.slow
def test_inference_config_writes_probabilities_for_a_folder_of_images(trained, tmp_path):
    images = sorted((trained["data"] / "test").glob("*.png"))[:5]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "probs.csv"
    wf = _workflow(["inference.json"], "infer", bundle_root=str(trained["root"]), input_path=str(folder),
                   output_file=str(out), ood_gate=False)  # every image scored (the gate: tests/test_ood.py)
    _run(wf)
    table = pd.read_csv(out)
    assert len(table) == 5
    assert list(table.columns)[1:] == json.loads((CONFIGS / "common.json").read_text())["classes"]
    probs = table.iloc[:, 1:].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    # the probabilities are those of the trained network on the same images
    from custom.evaluation.report import predict
    from custom.networks import load_weights
    from monai.networks.nets import DenseNet121

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = load_weights(DenseNet121(spatial_dims=2, in_channels=3, out_channels=14),
                       trained["root"] / "models" / "model.pt")
    logits = predict(net, [{"image": str(folder / p.name)} for p in images], parser.get_parsed_content("preprocessing"))
    assert np.allclose(torch.sigmoid(torch.as_tensor(logits)).numpy(), probs, atol=1e-5)


@pytest.mark.slow
def test_inference_skips_unreadable_images_with_their_reason_and_can_be_strict(trained, tmp_path, capsys):
    from custom.console import exception_chain
    from custom.data.transforms import ImageReadError

    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((trained["data"] / "test").glob("*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "cut.png").write_bytes((folder / p.name).read_bytes()[:60])  # a header and no pixels
    (folder / "page.png").write_text("<html>404</html>")
    out = tmp_path / "out" / "probs.csv"
    # the out-of-distribution gate off: this test is about unreadable files (the gate: tests/test_ood.py)
    common = dict(bundle_root=str(trained["root"]), input_path=str(folder), output_file=str(out), ood_gate=False)
    _run(_workflow(["inference.json"], "infer", **common))
    table = pd.read_csv(out)
    assert [Path(p).name for p in table["image"]] == sorted(p.name for p in folder.glob("0*.png"))  # the readable ones
    errors = pd.read_csv(out.parent / "errors.csv")
    assert list(errors["image"]) == [str(folder / "cut.png"), str(folder / "page.png")]
    assert errors["reason"].str.startswith(("corrupt or truncated", "not an image file Pillow can read")).all()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    errors_file = out.parent / "errors.csv"
    assert last == f"wrote probabilities of 3 image(s) to {out}; 2 skipped, unreadable (see {errors_file})"
    with pytest.raises(Exception) as err:  # --strict true: the first unreadable image stops the run
        _run(_workflow(["inference.json"], "infer", strict=True, **common))
    assert any(isinstance(e, ImageReadError) for e in exception_chain(err.value))
    assert f"cannot read image {folder / 'cut.png'}: corrupt or truncated" in _messages(err.value)
    for name in ("cut.png", "page.png"):
        (folder / name).unlink()
    _run(_workflow(["inference.json"], "infer", **common))
    assert len(pd.read_csv(out)) == 3 and not (out.parent / "errors.csv").exists()  # no stale errors file


@pytest.mark.slow
def test_plain_bce_is_one_override_and_leaves_the_memory_at_zero(tmp_path):
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), mlflow=False,
                   **{"nvum#loss": "bce", "datalist#root": str(tmp_path / "data")}, **dict(TINY, max_epochs=1))
    _run(wf)
    assert wf.parser.get_parsed_content("memory").values.abs().sum() == 0
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_iteration_schedule_with_ema_teacher_trains_and_checkpoints_the_teacher(tmp_path):
    authors = {"nvum#memory_schedule": "iteration", "nvum#use_teacher": "true", "nvum#reg": "elementwise",
               "nvum#mix_memory": "true", "nvum#reg_clamp": 1e-4}
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), mlflow="false",
                   **{"datalist#root": str(tmp_path / "data")}, **dict(TINY, max_epochs=1), **authors)
    _run(wf)
    teacher = wf.parser.get_parsed_content("teacher")
    loss = wf.parser.get_parsed_content("loss")
    assert teacher.enabled and loss.mix_memory and loss.clamp == 1e-4  # command-line strings parsed as flags
    assert wf.parser.get_parsed_content("mlflow_tracker") is None  # --mlflow false leaves the component out
    assert not (Path.cwd() / "mlruns.db").exists() and not (Path.cwd() / "mlruns").exists()  # tracking off: no store
    (ckpt,) = (tmp_path / "models").glob("checkpoint_epoch=*.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["teacher"].keys() == teacher.model.state_dict().keys()
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    # the best checkpoint holds the teacher (the evaluated network), not the student
    assert best.keys() == teacher.model.state_dict().keys()
    assert all(torch.equal(best[k], v) for k, v in teacher.model.state_dict().items())  # one epoch: best = final
    assert wf.parser.get_parsed_content("memory").values.abs().sum() > 0


def test_missing_dataset_folder_names_the_path(tmp_path):
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"classes": ["A", "No Finding"], "training": [{"image": "a.png", "label": [1, 0]}],
                                    "validation": [{"image": "b.png", "label": [0, 1]}]}))
    missing = tmp_path / "no_such_folder"
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), mlflow=False,
                   datalist={"_target_": "custom.DataList", "path": str(datalist), "dataset_dir": str(missing)})
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert f"dataset folder not found: {missing}" in _messages(err.value)


def test_missing_pretrained_weights_names_the_path(tmp_path):
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), mlflow=False,
                   pretrained_weights=str(tmp_path / "imagenet.pt"), **{"datalist#root": str(tmp_path / "data")},
                   **dict(TINY, max_epochs=1))
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert f"weights file not found: {tmp_path / 'imagenet.pt'}" in _messages(err.value)


def test_inference_without_input_names_the_setting(tmp_path):
    wf = _workflow(["inference.json"], "infer", input_path=str(tmp_path / "nothing_here"))
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert f"inference input not found: {tmp_path / 'nothing_here'}" in _messages(err.value)


def test_tracking_uri_defaults_to_sqlite_in_the_output_folder_and_honours_the_environment(tmp_path, monkeypatch):
    from custom.training.tracking import default_tracking_uri

    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


CONTRACT = ("image_size", "channels", "classes", "num_classes", "network_def", "device", "ckpt_dir", "load_image",
            "to_network_input", "preprocessing")


def test_the_model_contract_is_defined_once_for_training_and_inference(tmp_path):
    """Image size, channels, classes, network and preprocessing are edited in common.json and written into train.json
    and inference.json (``python -m custom.cli docs``), so an inference config cannot disagree with the training
    config and both run from any folder (no MONAI ``%`` file macro, which MONAI reads relative to the working
    folder)."""
    from custom.config import SHARED_CONFIGS, format_config, shared_texts, sync_shared

    common = json.loads((CONFIGS / "common.json").read_text())
    assert set(CONTRACT) == set(common)
    for path, text in shared_texts(CONFIGS).items():
        assert path.read_text() == text, f"{path.name} differs from common.json: run python -m custom.cli docs"
        config = json.loads(text)
        assert all(config[key] == common[key] for key in CONTRACT), path.name
    for path in CONFIGS.rglob("*.json"):  # no config reads another file through a % macro
        assert "%bundle/" not in path.read_text() and format_config(json.loads(path.read_text())) + "\n" == (
            path.read_text()), path
    assert json.loads((CONFIGS / "train.json").read_text())["validate"]["preprocessing"] == "@preprocessing"
    # the generator writes an edit of common.json into both configs, in place, and nothing else
    copy = tmp_path / "configs"
    copy.mkdir()
    for name in ("common.json", *SHARED_CONFIGS):
        (copy / name).write_text((CONFIGS / name).read_text())
    edited = {**common, "channels": 1}
    (copy / "common.json").write_text(format_config(edited) + "\n")
    assert sync_shared(copy) == list(SHARED_CONFIGS) and sync_shared(copy) == []
    for name in SHARED_CONFIGS:
        before, after = json.loads((CONFIGS / name).read_text()), json.loads((copy / name).read_text())
        assert list(after) == list(before) and after == {**before, "channels": 1}, name

    # the image size as a number only in common.json, its generated copies and the dataset overlays
    def numbers(value, key="image_size"):
        if isinstance(value, dict):
            return [v for k, v in value.items() if k == key and isinstance(v, int)] + [
                n for v in value.values() for n in numbers(v, key)]
        return [n for v in value for n in numbers(v, key)] if isinstance(value, list) else []

    for path in CONFIGS.rglob("*.json"):
        found = numbers(json.loads(path.read_text()))
        expected = path.name in ("common.json", *SHARED_CONFIGS) or path.parent.name == "datasets"
        assert bool(found) == expected, (path, found)


def test_metadata_and_the_class_vocabulary_follow_the_model_contract():
    """common.json holds the classes; metadata.json's outputs and custom.labels.NIH14_CLASSES are held to them."""
    from custom.labels import NIH14_CLASSES

    common = json.loads((CONFIGS / "common.json").read_text())
    fmt = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    image, pred = next(iter(fmt["inputs"].values())), next(iter(fmt["outputs"].values()))
    assert image["spatial_shape"] == [common["image_size"]] * 2 and image["num_channels"] == common["channels"]
    assert pred["channel_def"] == {str(i): c for i, c in enumerate(common["classes"])}
    assert pred["num_channels"] == len(common["classes"]) and pred["spatial_shape"] == [len(common["classes"])]
    assert NIH14_CLASSES == common["classes"]


def test_default_data_is_the_synthetic_set_in_one_place():
    """train.json's datalist is the generator's settings (no copy in an overlay), opened by a runtime component."""
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["datalist"]["source"] == "synthetic" and train["data"]["_target_"] == "custom.open_datalist"
    assert not (CONFIGS / "datasets" / "demo.json").exists()
    for path in CONFIGS.rglob("*.json"):
        assert "custom.tools" not in path.read_text(), path  # configs name the runtime only


@pytest.mark.slow
def test_the_best_model_carries_a_record_of_what_it_was_trained_on(trained):
    models = trained["root"] / "models"
    record = json.loads((models / "model.json").read_text())
    assert record["classes"] == json.loads((CONFIGS / "common.json").read_text())["classes"]
    assert record["image_size"] == 32 and record["num_training"] == TINY["datalist#num_training"]
    assert record["network"] == {"class": "DenseNet121"}  # the stock network of common.json's network_def
    assert record["nvum"]["memory_momentum"] == 0.9 and record["nvum"]["unbiased_memory"] is True
    assert Path(record["datalist"]) == trained["data"] / "datalist.json"
    (resume,) = sorted(models.glob("checkpoint_epoch=*.pt"))
    # the resume checkpoint holds the same record, less the thresholds the test report added after training
    after = {"thresholds", "threshold_rule", "threshold_notes", "threshold_split"}
    assert after <= set(record)
    assert torch.load(resume, weights_only=True)["run_record"] == {k: v for k, v in record.items() if k not in after}


@pytest.mark.slow
def test_inference_rebuilds_the_recorded_network_and_refuses_another_input_size(tmp_path):
    """A model trained with another network (the benchmark's ResNet, set by overriding network_def)
    and input size is served by the default inference.json, which reads both from model.json."""
    resnet = {"_target_": "custom.build_network", "name": "ResNet", "num_classes": "@num_classes", "block": "basic",
              "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64], "spatial_dims": 2, "n_input_channels": 3,
              "conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True}
    data = tmp_path / "data"
    overrides = {"datalist#root": str(data), **dict(TINY, max_epochs=1), "image_size": 24, "network_def": resnet}
    _run(_workflow(["train.json"], "train", bundle_root=str(tmp_path), mlflow=False, test_and_deploy=False,
                   **overrides))
    assert json.loads((tmp_path / "models" / "model.json").read_text())["network"]["name"] == "ResNet"
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((data / "test").glob("*.png"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    common = dict(bundle_root=str(tmp_path), input_path=str(images), output_file=str(tmp_path / "p.csv"),
                  ood_gate=False)  # this test is about the image size (the gate: tests/test_ood.py)
    with pytest.raises(Exception) as err:
        _run(_workflow(["inference.json"], "infer", **common))
    assert "trained on 24 px images" in _messages(err.value) and "--image_size 24" in _messages(err.value)
    _run(_workflow(["inference.json"], "infer", image_size=24, **common))
    assert len(pd.read_csv(tmp_path / "p.csv")) == 3


@pytest.mark.slow
def test_test_and_deploy_switch_leaves_only_the_trained_checkpoints(tmp_path, capsys):
    wf = _workflow(["train.json"], "train", bundle_root=str(tmp_path), test_and_deploy=False,
                   **{"datalist#root": str(tmp_path / "data")}, **dict(TINY, max_epochs=1))
    _run(wf)
    assert wf.parser.get_parsed_content("test_report") is None  # the steps are left out (_disabled_) ...
    assert "not run (switched off): test report, export and registration" in capsys.readouterr().out  # ... and said
    assert (tmp_path / "models" / "model.pt").is_file()
    assert set(json.loads((tmp_path / "models" / "model.json").read_text())["thresholds"]) == set(
        json.loads((CONFIGS / "common.json").read_text())["classes"])  # chosen on validation all the same
    assert not list((tmp_path / "eval").glob("test_*"))
    assert not (tmp_path / "models" / "model.ts").exists()
    assert not (tmp_path / "models" / "nvum_cxr_classification.zip").exists()
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "eval" / "mlruns.db"))
    (run,) = mlflow.search_runs(experiment_names=["nvum"], output_format="list")
    assert run.info.status == "FINISHED" and "val_mean_auc" in run.data.metrics  # the training run is still tracked
