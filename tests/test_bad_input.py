"""Bad input stops with a message naming the file, row or key (or is skipped where configured)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121
from PIL import Image

from conftest import CONFIGS, ROOT

from custom.data import DataList, DataListError
from custom.networks import load_pretrained, read_state_dict
from custom.tools.preflight import check
from custom.data.transforms import ImageReadError, LoadImageChestXrayd, check_image

CLASSES = ["A", "B", "No Finding"]


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _list(tmp_path, n_train=6, n_val=3, classes=CLASSES):
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("training", n_train), ("validation", n_val)):
        splits[split] = []
        for i in range(n):
            image = f"img/{split}_{i}.png"
            _png(tmp_path / image, value=int(rng.integers(0, 255)))
            label = [int(v) for v in rng.integers(0, 2, len(classes))]
            splits[split].append({"image": image, "label": label, "patient": f"{split}{i}"})
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"classes": classes, **splits}))
    return path


def test_truncated_image_is_named_by_the_loader(tmp_path):
    path = _truncate(_png(tmp_path / "broken.png"))
    loader = LoadImageChestXrayd(keys="image", reader="PILReader", image_only=True, ensure_channel_first=True)
    with pytest.raises(ImageReadError, match="broken.png"):
        loader({"image": str(path)})
    good = _png(tmp_path / "good.png", 7)
    assert loader({"image": str(good)})["image"].shape == (1, 16, 16)


def test_check_image_tells_readable_from_corrupt_files(tmp_path):
    assert check_image(_png(tmp_path / "ok.png")) is None
    assert check_image(_truncate(_png(tmp_path / "cut.png"))) is not None
    (tmp_path / "text.png").write_text("not an image")
    assert check_image(tmp_path / "text.png") is not None
    assert check_image(tmp_path / "absent.png") == "file not found"


def test_corrupt_image_stops_a_verified_data_list_with_its_name(tmp_path):
    path = _list(tmp_path)
    _truncate(tmp_path / "img/training_2.png")
    DataList(path)  # existence check only: the file is there
    with pytest.raises(FileNotFoundError, match="training_2.png"):
        DataList(path, verify_images=True)


def test_skip_policy_drops_unreadable_images_and_reindexes_the_memory_rows(tmp_path):
    path = _list(tmp_path)
    _truncate(tmp_path / "img/training_2.png")
    (tmp_path / "img/validation_0.png").unlink()
    dl = DataList(path, on_bad_image="skip")
    assert sorted(image for _, image, _ in dl.skipped) == ["img/training_2.png", "img/validation_0.png"]
    assert len(dl) == 5 and len(dl.items("validation")) == 2
    items = dl.items("training")
    assert [i["index"] for i in items] == list(range(5))  # memory rows stay contiguous
    assert not any(i["image"].endswith("training_2.png") for i in items)
    with pytest.raises(ValueError, match="on_bad_image"):
        DataList(path, on_bad_image="ignore")


@pytest.mark.parametrize("classes, message", [([], "non-empty list"), (["A", "A", "B"], r"\['A'\] listed more than once"), (["A", ""], "non-empty list")])
def test_bad_class_names_are_refused(tmp_path, classes, message):
    path = tmp_path / "l.json"
    path.write_text(json.dumps({"classes": classes, "training": [], "validation": []}))
    with pytest.raises(DataListError, match=message):
        DataList(path, required_splits=())


def test_pretrained_weights_with_wrong_keys_or_shapes_are_named(tmp_path):
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=3)
    state = net.state_dict()
    bad_shape = dict(state)
    bad_shape["features.conv0.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(bad_shape, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape\.pt.*\n.*features\.conv0\.weight: file \(64, 1, 7, 7\)"):
        load_pretrained(DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), tmp_path / "shape.pt")
    missing = {k: v for k, v in state.items() if not k.startswith("features.denseblock4")}
    torch.save(missing, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match=r"missing key\(s\), e\.g\. \['features\.denseblock4"):
        load_pretrained(DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), tmp_path / "keys.pt")
    torch.save(state, tmp_path / "good.pt")
    loaded = load_pretrained(DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), tmp_path / "good.pt")
    torch.testing.assert_close(loaded.state_dict()["features.conv0.weight"], state["features.conv0.weight"])


class _Payload:
    """Pickles to a call that would create a file when unpickled without ``weights_only``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_weights_files_never_execute_code(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="evil.pt"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def _tiny_overrides(tmp_path, path):
    return {
        "bundle_root": str(tmp_path / "bundle"),
        "datalist": {"_target_": "custom.DataList", "path": str(path)},
        "mlflow": False,
    }


def test_preflight_check_passes_a_good_setup_and_names_a_corrupt_image(tmp_path, capsys):
    path = _list(tmp_path)
    assert check(str(CONFIGS / "train.json"), **_tiny_overrides(tmp_path, path)) == 0
    out = capsys.readouterr().out
    assert "[FAIL]" not in out and "all 9 images decode" in out
    _truncate(tmp_path / "img/validation_1.png")
    assert check(str(CONFIGS / "train.json"), **_tiny_overrides(tmp_path, path)) == 1
    out = capsys.readouterr().out
    assert "[FAIL] every image exists and decodes" in out and "validation_1.png" in out


def test_preflight_check_command_exits_nonzero_on_a_bad_label_row(tmp_path):
    path = _list(tmp_path)
    doc = json.loads(path.read_text())
    doc["training"][4]["label"] = [1, 0]  # one value short
    path.write_text(json.dumps(doc))
    cmd = [sys.executable, "-m", "custom.cli", "check", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(tmp_path / "b"), "--mlflow", "false",
           "--datalist", json.dumps({"_target_": "custom.DataList", "path": str(path)})]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "split 'training', row 4" in out.stdout and "length 2, expected 3" in out.stdout


def test_nan_loss_stops_training_naming_epoch_iteration_and_indices():
    from custom.training.engine import NonFiniteLossError, NVUMTrainer

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    calls = {"n": 0}

    def loss(pred, target, index):
        calls["n"] += 1
        value = torch.nn.functional.binary_cross_entropy_with_logits(pred, target)
        if calls["n"] == 2:  # the second step goes wrong
            value = value * float("nan")
        return {"loss": value, "bce": value.detach(), "reg": torch.zeros(())}

    batches = [{"image": torch.randn(2, 1, 2, 2), "label": torch.ones(2, 3), "index": torch.tensor([2 * i, 2 * i + 1])} for i in range(3)]
    trainer = NVUMTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=batches, network=net,
                          optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=loss, decollate=False)  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 2 .*dataset indices of the batch: \[2, 3\]"):
        trainer.run()


def test_resume_refuses_a_checkpoint_trained_on_other_classes():
    from custom.training.checkpoints import RunRecord

    here = RunRecord(["A", "B", "No Finding"], 10, "new.json")
    saved = RunRecord(["A", "C", "No Finding"], 10, "old.json").state_dict()
    with pytest.raises(DataListError, match=r"unknown to the checkpoint: \['B'\]; missing: \['C'\]"):
        here.check(saved, "ckpt.pt")
    here.check(RunRecord(["A", "B", "No Finding"], 10, "old.json").state_dict(), "ckpt.pt")  # same classes and size: fine
