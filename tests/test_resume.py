"""Crash safety: a run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted
run; checkpoints are written atomically and a failed write names its path; resuming with another
data list is refused."""

import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine

from conftest import CONFIGS, ROOT

from custom.training.checkpoints import BestModelSaver, CheckpointSaver, CheckpointWriteError, find_checkpoint
from custom.training.engine import EpochReseed, NVUMTrainer, epoch_seed
from custom.training.progress import RunSummary
from custom.data import DataListError

TINY = [
    "--datalist#num_training", "96", "--datalist#num_validation", "64", "--datalist#num_test", "32",
    "--datalist#num_test_shifted", "32", "--max_epochs", "3", "--batch_size", "32", "--mlflow", "false",
]  # fmt: skip
EPOCH_LENGTH = 3  # 96 images / batch 32

KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
wf = ConfigWorkflow(config_file={config!r}, workflow_type="train", **{overrides!r})
wf.initialize()
trainer = wf.parser.get_parsed_content("train#trainer")
trainer.add_event_handler(Events.ITERATION_COMPLETED(once={kill_at}), lambda e: os.kill(os.getpid(), signal.SIGKILL))
wf.run()
"""


def _value(text):
    return {"false": False, "true": True}.get(text, int(text) if text.isdigit() else text)


def _env(tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _train(tmp_path, root, data, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(root), "--datalist#root", str(data), *TINY, *extra]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _last_val_auc(stdout):
    found = re.findall(r"Epoch\[3\] Metrics -- val_mean_auc: ([0-9.]+)", stdout)  # MONAI's StatsHandler line
    assert found, stdout[-2000:]
    return found[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = tmp / "data"
    full = _train(tmp, tmp / "full", data)

    # the same run, killed with SIGKILL in the middle of epoch 2 ...
    overrides = {"bundle_root": str(tmp / "crash"), "datalist#root": str(data)}
    overrides.update({TINY[i].lstrip("-"): _value(TINY[i + 1]) for i in range(0, len(TINY), 2)})
    script = tmp / "killer.py"
    script.write_text(
        KILLER.format(root=str(ROOT), config=str(CONFIGS / "train.json"), overrides=overrides, kill_at=EPOCH_LENGTH + 2)
    )
    killed = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=600
    )
    # ... and resumed with the README's command
    resumed = _train(tmp, tmp / "crash", data, "--resume", "true")
    return {"tmp": tmp, "data": data, "full": full, "killed": killed, "resumed": resumed}


@pytest.mark.slow
def test_killed_run_stopped_mid_epoch_two(runs):
    assert runs["killed"].returncode == -signal.SIGKILL, runs["killed"].stderr[-2000:]
    assert "Epoch[1] Metrics -- train" in runs["killed"].stdout and "Epoch[2] Metrics" not in runs["killed"].stdout


@pytest.mark.slow
def test_resumed_run_starts_from_the_last_checkpoint(runs):
    assert "resumed from" in runs["resumed"] and "epoch 1/3 done" in runs["resumed"]
    assert "Epoch[1] Metrics" not in runs["resumed"]  # epoch 1 is not trained again


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_run(runs):
    tmp = runs["tmp"]
    full = torch.load(tmp / "full" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    resumed = torch.load(tmp / "crash" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert full["memory"]["values"].abs().sum() > 0  # the memory was actually updated
    torch.testing.assert_close(resumed["memory"]["values"], full["memory"]["values"], rtol=0, atol=1e-6)
    for key in full["model"]:
        torch.testing.assert_close(resumed["model"][key], full["model"][key], rtol=0, atol=1e-6)
    assert resumed["trainer"]["iteration"] == full["trainer"]["iteration"] == 3 * EPOCH_LENGTH
    # one resume point: the checkpoint the run resumed from is gone once a newer one is complete
    assert sorted(p.name for p in (tmp / "crash" / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=3.pt"]
    assert resumed["validation"]["best_metric"] == pytest.approx(full["validation"]["best_metric"], abs=1e-7)
    assert resumed["validation"]["best_metric_epoch"] == full["validation"]["best_metric_epoch"]
    assert _last_val_auc(runs["resumed"]) == _last_val_auc(runs["full"])
    best_full = torch.load(tmp / "full" / "models" / "model.pt", weights_only=True)
    best_resumed = torch.load(tmp / "crash" / "models" / "model.pt", weights_only=True)
    for key in best_full:
        torch.testing.assert_close(best_resumed[key], best_full[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_resume_with_a_data_list_of_another_size_is_refused(runs):
    from monai.bundle import ConfigWorkflow

    ckpt = find_checkpoint(True, runs["tmp"] / "full" / "models")
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(runs["tmp"] / "other"),
        resume=str(ckpt), mlflow=False, max_epochs=4,
        **{"datalist#root": str(runs["data"]) + "-128", "datalist#num_training": 128},
        **{"datalist#num_validation": 64, "datalist#num_test": 32, "datalist#num_test_shifted": 32, "batch_size": 32},
    )  # fmt: skip
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    err = next((e for e in chain if isinstance(e, DataListError)), None)
    assert err is not None, chain
    assert "memory of 96 training images" in str(err) and "has 128" in str(err) and str(ckpt) in str(err)


def test_resume_without_a_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        find_checkpoint(True, tmp_path)
    assert find_checkpoint(False, tmp_path) is None
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"x")
    (tmp_path / "checkpoint_epoch=10.pt").write_bytes(b"x")
    assert find_checkpoint("latest", tmp_path).name == "checkpoint_epoch=10.pt"  # numeric, not lexical order


def test_epoch_reseed_makes_each_epoch_a_function_of_seed_and_epoch():
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.transforms import RandFlipd

    flip = RandFlipd(keys="image", prob=0.5)
    net = torch.nn.Linear(2, 2)
    loader = DataLoader(Dataset([{"image": torch.zeros(1, 2, 2)}], transform=flip), batch_size=1)
    reseed = EpochReseed(seed=3)
    trainer = NVUMTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=net,
                          optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=None,
                          train_handlers=[reseed])
    assert reseed.transform is loader.dataset.transform  # the training set's transforms, found when attached
    assert trainer.has_event_handler(reseed, Events.EPOCH_STARTED)

    def draws(epoch):
        trainer.state.epoch = epoch
        reseed(trainer)
        return torch.rand(3).tolist(), flip.R.rand()

    first = draws(2)
    torch.rand(100)  # whatever happened in between ...
    assert draws(2) == first  # ... epoch 2 draws the same numbers
    assert draws(3) != first
    assert epoch_seed(3, 2) != epoch_seed(2, 3)


def test_failed_checkpoint_write_names_the_path_and_keeps_the_previous_one(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: net.weight.data.add_(1.0))
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, n_saved=1)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = tmp_path / "checkpoint_epoch=1.pt"
    saved = torch.load(first, weights_only=True)["model"]["weight"].clone()

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointWriteError, match=re.escape(str(tmp_path / "checkpoint_epoch=2.pt"))):
        engine.run([0], max_epochs=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # no partial file, old one kept
    torch.testing.assert_close(torch.load(first, weights_only=True)["model"]["weight"], saved)


def test_a_newer_checkpoint_replaces_every_older_one_of_the_folder(tmp_path):
    """A resumed run (or a new run in the same folder) leaves one resume point, the newest."""
    net = torch.nn.Linear(2, 2)
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"from the run that was resumed")
    (tmp_path / "checkpoint_epoch=7.pt").write_bytes(b"from an earlier run")
    (tmp_path / "model.pt").write_bytes(b"the best model stays")
    engine = Engine(lambda e, b: None)
    CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, n_saved=1).attach(engine)
    engine.run([0], max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]


def _scored_engine(net, scores):
    engine = Engine(lambda e, b: None)

    @engine.on(__import__("ignite").engine.Events.EPOCH_COMPLETED)
    def _score(e):
        net.weight.data.fill_(float(e.state.epoch))
        e.state.metrics["auc"] = next(scores)

    return engine


def test_best_model_file_survives_a_better_epoch_and_carries_its_record(tmp_path):
    """The fixed-name best model (model.pt) is replaced in place, never deleted after the write, and its run
    record model.json is written beside it."""
    from custom.record import RunRecord

    net = torch.nn.Linear(2, 2)
    engine = _scored_engine(net, iter([0.5, 0.7, 0.6]))
    record = RunRecord(["A", "No Finding"], 10, "list.json", image_size=32)
    BestModelSaver(str(tmp_path), net, record=record, key_metric_name="auc").attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0]) == 2.0  # epoch 2 was best
    assert __import__("json").loads((tmp_path / "model.json").read_text())["classes"] == ["A", "No Finding"]


def test_best_model_saver_resumes_its_best_score(tmp_path):
    """Restored from its state, the saver does not overwrite model.pt with a worse network."""
    net = torch.nn.Linear(2, 2)
    first = BestModelSaver(str(tmp_path), net, key_metric_name="auc")
    engine = _scored_engine(net, iter([0.5, 0.7]))
    first.attach(engine)
    engine.run([0], max_epochs=2)
    resumed = BestModelSaver(str(tmp_path), net, key_metric_name="auc")
    resumed.load_state_dict(first.state_dict())
    later = _scored_engine(net, iter([0.6]))
    resumed.attach(later)
    later.run([0], max_epochs=1)
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0]) == 2.0  # 0.6 < 0.7: kept


def test_a_failing_run_still_lists_the_files_it_wrote(tmp_path, capsys):
    """Training that fails in epoch 2 (here a NaN loss) ends with the list of what it wrote: the epoch-1 checkpoint."""
    from custom.training.engine import NonFiniteLossError

    net = torch.nn.Linear(3, 2)
    calls = []

    def loss(logits, labels, index):
        calls.append(1)
        value = logits.sum() * (float("nan") if len(calls) > 2 else 1.0)
        return {"loss": value, "bce": value.detach(), "reg": value.detach() * 0}

    batches = [{"image": torch.randn(2, 3), "label": torch.zeros(2, 2), "index": torch.arange(2)}] * 2
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1)
    trainer = NVUMTrainer(device=torch.device("cpu"), max_epochs=3, train_data_loader=batches, network=net,
                          optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=loss, decollate=False,
                          train_handlers=[RunSummary(tmp_path), saver])
    with pytest.raises(NonFiniteLossError):
        trainer.run()
    out = capsys.readouterr().out
    assert "written:" in out and str((tmp_path / "checkpoint_epoch=1.pt").resolve()) in out
