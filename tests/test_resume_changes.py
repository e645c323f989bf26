"""What a resumed run changed: every setting of the experiment is compared, safe ones pass, accepted ones are named."""

from custom.training.changes import accepted, changes_message, record_changes

SAVED = {
    "classes": ["A", "B"], "num_training": 10, "datalist": "/data/list.json", "dataset_dir": "/data",
    "image_size": 32, "network": {"_target_": "DenseNet121", "out_channels": 2},
    "nvum": {"loss": "nvum", "reg_weight": 1.0, "memory_momentum": 0.9},
    "recipe": {"learning_rate": 0.001, "batch_size": 64, "max_epochs": 6, "seed": 0, "lr_milestones": [4, 5],
               "training_items": "abc123"},
    "thresholds": {"A": 0.5},
}


def _now(**changes):
    import copy

    now = copy.deepcopy(SAVED)
    now.pop("thresholds")
    for key, value in changes.items():
        group, _, name = key.partition("__")
        if name:
            now[group][name] = value
        else:
            now[group] = value
    return now


def test_the_same_settings_and_safe_changes_are_no_change():
    assert record_changes(SAVED, _now()) == []
    # more epochs, a moved data list with the same content, 1 == 1.0
    assert record_changes(SAVED, _now(recipe__max_epochs=9, datalist="/moved/list.json", dataset_dir="/moved",
                                      nvum__reg_weight=1)) == []


def test_every_experiment_setting_that_changed_is_listed_with_both_values():
    now = _now(nvum__loss="bce", recipe__learning_rate=0.5, recipe__batch_size=32, image_size=64,
               recipe__lr_milestones=[3, 5], recipe__training_items="def456", recipe__max_epochs=5,
               network={"_target_": "DenseNet121", "out_channels": 3})
    found = {key: (old, new) for key, old, new in record_changes(SAVED, now)}
    assert found == {
        "nvum.loss": ("nvum", "bce"), "recipe.learning_rate": (0.001, 0.5), "recipe.batch_size": (64, 32),
        "image_size": (32, 64), "recipe.lr_milestones": ([4, 5], [3, 5]), "recipe.training_items": ("abc123", "def456"),
        "recipe.max_epochs": (6, 5), "network.out_channels": (2, 3),
    }


def test_accepting_changes_by_name_or_all_and_the_message_names_each_and_the_override():
    changes = record_changes(SAVED, _now(nvum__loss="bce", recipe__learning_rate=0.5))
    ok, refused = accepted(changes, "learning_rate")
    assert [c[0] for c in ok] == ["recipe.learning_rate"] and [c[0] for c in refused] == ["nvum.loss"]
    assert accepted(changes, ["nvum.loss", "learning_rate"]) == (changes, [])
    assert accepted(changes, "all") == (changes, []) and accepted(changes, True) == (changes, [])
    for nothing in (None, "", "false", False, []):
        assert accepted(changes, nothing) == ([], changes)
    message = changes_message("ckpt/checkpoint_epoch=2.pt", changes)
    assert "resuming ckpt/checkpoint_epoch=2.pt with settings that differ" in message
    assert "  nvum.loss: 'nvum' in the checkpoint, 'bce' now" in message
    assert "  recipe.learning_rate: 0.001 in the checkpoint, 0.5 now" in message
    assert '--resume_changes "learning_rate,loss"' in message or '--resume_changes "loss,learning_rate"' in message


# --- through the bundle's command line -----------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import CONFIGS, ROOT  # noqa: E402

TINY = ["--datalist#num_training", "96", "--datalist#num_validation", "64", "--datalist#num_test", "32",
        "--datalist#num_test_shifted", "32", "--batch_size", "32", "--mlflow", "false",
        "--test_and_deploy", "false"]  # fmt: skip


def _bundle(root, data, *extra, check=True, background=False):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(root), "--datalist#root", str(data), *TINY, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_resume_with_changed_settings_or_a_reordered_list_stops_and_an_accepted_change_is_used_and_recorded(
        tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    _bundle(root, data, "--max_epochs", "1")
    refused = _bundle(root, data, "--max_epochs", "2", "--resume", "true", "--learning_rate", "0.5", "--nvum#loss",
                      "bce", "--batch_size", "16", check=False)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()
    text = "\n".join(last[-12:])
    for line in ("recipe.learning_rate: 0.001 in the checkpoint, 0.5 now", "nvum.loss: 'nvum' in the checkpoint, "
                 "'bce' now", "recipe.batch_size: 64 in the checkpoint, 16 now"):
        assert line.replace("64", "32") in text, text
    assert "--resume_changes" in text
    assert not (root / "models" / "checkpoint_epoch=2.pt").exists()  # nothing trained

    # the training list reordered (same size, same classes): each memory row would belong to another image
    listed = json.loads((data / "datalist.json").read_text())
    listed["training"] = listed["training"][::-1]
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps(listed))
    moved = _bundle(root, data, "--max_epochs", "2", "--resume", "true", "--datalist", str(reordered),
                    "--dataset_dir", str(data), check=False)
    assert moved.returncode != 0 and "training_items:" in moved.stderr, moved.stderr[-2000:]

    # an accepted learning-rate change is applied to the restored optimiser and written into the record
    _bundle(root, data, "--max_epochs", "2", "--resume", "true", "--learning_rate", "0.01", "--resume_changes",
            "learning_rate")
    checkpoint = torch.load(root / "models" / "checkpoint_epoch=2.pt", weights_only=False)
    assert [g["lr"] for g in checkpoint["optimizer"]["param_groups"]] == [pytest.approx(0.01)]
    record = checkpoint["run_record"]  # model.json is this record whenever the resumed run saves a better model
    resumed = record["resumed"]
    assert resumed[-1]["after_epoch"] == 1
    assert resumed[-1]["changes"] == {"recipe.learning_rate": {"before": 0.001, "after": 0.01}}
    assert record["recipe"]["learning_rate"] == 0.01


@pytest.mark.slow
def test_a_second_training_into_the_same_bundle_root_stops_naming_the_first(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    _bundle(tmp_path / "warm", data, "--max_epochs", "1")  # the synthetic set, generated once
    first = _bundle(root, data, "--max_epochs", "100", background=True)  # killed once the second has tried
    try:
        lock = root / ".nvum-run.lock"
        deadline = time.time() + 300
        while time.time() < deadline and f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):
            time.sleep(0.2)
        second = _bundle(root, data, "--max_epochs", "1", check=False)
        assert second.returncode != 0
        assert f"another run is writing to the output folder (bundle_root) {root.resolve()}: process {first.pid} " \
               in second.stderr, second.stderr[-2000:]
    finally:
        first.kill()
        first.wait()
