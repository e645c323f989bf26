"""Your own data in one flag: ``--datalist my_list.json --dataset_dir /data/nih`` (a path where a
component is accepted), the component form as before, and errors that name what is wrong."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import CONFIGS, ROOT

CLASSES = ["Effusion", "Mass", "No Finding"]


def _own_data(folder):
    """A data list in one folder, its images (relative paths) in another, as a user keeps them."""
    rng = np.random.default_rng(0)
    images = folder / "images"
    (images / "sub").mkdir(parents=True)
    datalist = {"classes": CLASSES}
    for split, n in (("training", 16), ("validation", 8), ("test", 8)):
        items = []
        for i in range(n):
            name = f"sub/{split}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(images / name)
            items.append({"image": name, "label": [i % 2, (i + 1) % 2, 0], "patient": f"{split}{i}"})
        datalist[split] = items
    (folder / "lists").mkdir()
    (folder / "lists" / "my_list.json").write_text(json.dumps(datalist))
    return folder / "lists" / "my_list.json", images


def _train(args, cwd, bundle_root):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(bundle_root), "--max_epochs", "1", "--batch_size", "8", "--mlflow", "false",
           "--test_and_deploy", "false", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["path", "component"])
def test_training_on_a_data_list_given_as_a_path_or_as_a_component(tmp_path, form):
    path, images = _own_data(tmp_path)
    classes = ["--classes", json.dumps(CLASSES)]  # not the 14 NIH classes of common.json: say which
    if form == "path":  # the one-flag form (plus the classes)
        args = ["--datalist", str(path), "--dataset_dir", str(images), *classes]
    else:  # the component form still works
        args = ["--datalist", f"{{'_target_': 'custom.DataList', 'path': '{path}', 'dataset_dir': '{images}'}}",
                *classes]
    proc = _train(args, ROOT, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "models" / "model.json").read_text())
    assert record["classes"] == CLASSES and record["num_training"] == 16
    assert record["datalist"] == str(path) and record["dataset_dir"] == str(images)


def test_a_data_list_with_other_classes_than_the_model_contract_names_the_override(tmp_path):
    from custom.data import open_datalist

    path, images = _own_data(tmp_path)
    with pytest.raises(ValueError) as err:
        open_datalist(str(path), str(images), classes=["Atelectasis", "Effusion", "No Finding"])
    assert f"the data list {path} has classes {CLASSES}" in str(err.value)
    assert f'--classes "{CLASSES}"' in str(err.value)
    assert open_datalist(str(path), str(images), classes=CLASSES).classes == CLASSES


def test_a_bad_datalist_value_is_named():
    from custom.data.sources import open_datalist

    with pytest.raises(ValueError, match="'datalist' is empty: give a data-list file"):
        open_datalist("")
    with pytest.raises(FileNotFoundError, match="data list not found: /nowhere/list.json"):
        open_datalist("/nowhere/list.json", "/tmp")
    with pytest.raises(TypeError, match="'datalist' must be a data-list file path or a data-list component .* got int"):
        open_datalist(3)


def test_a_data_list_path_without_dataset_dir_reads_images_beside_it(tmp_path):
    from custom.data.sources import open_datalist

    path, images = _own_data(tmp_path)
    with pytest.raises(FileNotFoundError, match="32 image\\(s\\) of data list .*my_list.json are not found"):
        open_datalist(path)  # the images are not beside the list: the message names the list
    moved = images / "my_list.json"
    moved.write_text(path.read_text())
    dl = open_datalist(str(moved), "")
    assert dl.classes == CLASSES and len(dl) == 16
    assert dl.items("test")[0]["image"] == str(images / "sub" / "test_0.png")
