"""Settings given on the command line must name something: a misspelt one stops the command before any work,
naming the closest ids; overlays, component arguments and the synthetic set's options keep working."""

import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from conftest import CONFIGS, ROOT
from custom.config import UnknownSettingError, check_overrides, command_line_overrides, resolve_includes


def _config(*names):
    return resolve_includes(ConfigParser.load_config_files([str(CONFIGS / n) for n in names]), ROOT)


def test_known_settings_pass():
    train = _config("train.json")
    check_overrides(train, ["max_epochs", "nvum#loss", "image_size", "classes", "datalist", "dataset_dir",
                            "train#preprocessing#transforms#3#prob", "mlflow_tracker#_disabled_"])
    # arguments a component takes, and the synthetic set's generator options, may be added
    check_overrides(train, ["optimizer#betas", "optimizer#eps", "datalist#root", "memory#momentum"])
    # an overlay's own ids
    check_overrides(_config("train.json", "datasets/chexpert.json"), ["nih_dir", "crop_scale", "eval_batch_size"])


@pytest.mark.parametrize("setting, suggestion", [
    ("max_epoch", "max_epochs"),
    ("nvum#los", "nvum#loss"),
    ("optimizer#bettas", "optimizer#betas"),
    ("datalist#num_train", "datalist#num_training"),
    ("learning_rat", "learning_rate"),
])  # fmt: skip
def test_a_misspelt_setting_names_the_closest_ids(setting, suggestion):
    with pytest.raises(UnknownSettingError) as err:
        check_overrides(_config("train.json"), [setting])
    assert f"--{setting} (did you mean {suggestion}" in str(err.value) and "nothing was run" in str(err.value)


def test_a_setting_of_another_dataset_is_unknown_to_its_data_list():
    """datalist#noise is a synthetic-set option: the NIH overlay's data list (custom.real_datalist) has none."""
    check_overrides(_config("train.json"), ["datalist#noise"])
    with pytest.raises(UnknownSettingError, match="--datalist#noise"):
        check_overrides(_config("train.json", "datasets/nih.json"), ["datalist#noise"])


def test_every_unknown_setting_is_named_at_once():
    with pytest.raises(UnknownSettingError) as err:
        check_overrides(_config("train.json"), ["max_epoch", "batchsize", "seed"])
    assert "--max_epoch" in str(err.value) and "--batchsize" in str(err.value) and "--seed" not in str(err.value)


def test_the_bundle_command_line_is_read_like_monai_reads_it():
    argv = ["training", "--config_file", "['a.json', 'b.json']", "--max_epochs", "1", "--meta_file", "m.json",
            "--nvum#loss=bce", "--datalist#root", "/tmp/x"]
    assert command_line_overrides(argv) == (["a.json", "b.json"],
                                            {"max_epochs": "1", "nvum#loss": "bce", "datalist#root": "/tmp/x"})


def test_the_check_command_fails_on_a_misspelt_setting(capsys):
    from custom.tools.preflight import check

    assert check(str(CONFIGS / "train.json"), max_epoch=1) == 1
    out = capsys.readouterr().out
    assert "[FAIL] config parses" in out and "--max_epoch (did you mean max_epochs?)" in out


@pytest.mark.slow
def test_the_bundle_command_stops_on_a_misspelt_setting_before_any_work(tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(tmp_path / "run"), "--max_epoch", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = (out.stdout + out.stderr).rstrip().splitlines()
    assert out.returncode == 1 and lines[-1].startswith("error: unknown setting --max_epoch (did you mean max_epochs?)")
    assert not Path(tmp_path / "run").exists()  # nothing was built or written
