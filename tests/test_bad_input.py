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

from conftest import CONFIGS, ROOT, infer_with_stub, inference_preprocessing

from custom.data import DataList, DataListError
from custom.networks import load_pretrained, read_state_dict
from custom.tools.preflight import DATALIST, DEGENERATE, IDS, IMAGES, POSITIVES, check
from custom.data.transforms import ImageReadError, LoadImageChestXrayd, check_image

CLASSES = ["A", "B", "No Finding"]


def _png(path, value=0, size=16):
    """A PNG of ``value`` with one pixel of another value (a constant image is degenerate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size), value, np.uint8)
    pixels[0, 0] = 255 - value
    Image.fromarray(pixels).save(path)
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


@pytest.mark.parametrize("classes, message", [([], "non-empty list"), (["A", "A", "B"], r"\['A'\] listed more than"),
                                              (["A", ""], "non-empty list")])
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


def test_a_classification_head_initialised_afresh_is_said(tmp_path, capsys):
    imagenet = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000).state_dict()
    torch.save(imagenet, tmp_path / "imagenet.pt")
    net = load_pretrained(DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), tmp_path / "imagenet.pt")
    out = capsys.readouterr().out
    assert (f"pretrained weights {tmp_path / 'imagenet.pt'}: the classification head does not fit this network's "
            "classes and is initialised afresh (class_layers.out.weight (3, 1024) (file: (1000, 1024)), "
            "class_layers.out.bias (3,) (file: (1000,)))") in out
    torch.testing.assert_close(net.state_dict()["features.conv0.weight"], imagenet["features.conv0.weight"])
    load_pretrained(DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000), tmp_path / "imagenet.pt")
    assert "initialised afresh" not in capsys.readouterr().out  # a head that fits is loaded, and nothing is said


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
        "classes": CLASSES,
        "mlflow": False,
        "test_and_deploy": False,  # the lists have no test split
    }


def test_preflight_check_passes_a_good_setup_and_names_a_corrupt_image(tmp_path, capsys):
    path = _list(tmp_path)
    # what training would only find after the work: no test split for the test after training, a last batch of 1
    assert check(str(CONFIGS / "train.json"), **dict(_tiny_overrides(tmp_path, path), test_and_deploy=True)) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] test sets for the test after training (test_and_deploy): data list {path} has no test split" in out
    overrides = _tiny_overrides(tmp_path, path)
    n = len(json.loads(path.read_text())["training"])
    assert check(str(CONFIGS / "train.json"), **dict(overrides, batch_size=n - 1)) == 1
    assert f"[FAIL] no last training batch of one image (batch norm): {n} training images in batches of {n - 1}" in (
        capsys.readouterr().out)
    assert check(str(CONFIGS / "train.json"), **dict(overrides, image_size=0)) == 1
    out = capsys.readouterr().out
    assert "[FAIL] config parses: invalid setting: image_size must be a positive integer, got 0" in out
    assert check(str(CONFIGS / "train.json"), **_tiny_overrides(tmp_path, path)) == 0
    out = capsys.readouterr().out
    assert "[FAIL]" not in out and "all 9 images decode" in out
    _truncate(tmp_path / "img/validation_1.png")
    assert check(str(CONFIGS / "train.json"), **_tiny_overrides(tmp_path, path)) == 1
    out = capsys.readouterr().out
    assert "[FAIL] every image exists and decodes" in out and "validation_1.png" in out


@pytest.mark.slow
def test_preflight_check_command_reports_every_problem_in_one_run(tmp_path):
    path = _list(tmp_path)
    doc = json.loads(path.read_text())
    doc["training"][4]["label"] = [1, 0]  # one value short
    path.write_text(json.dumps(doc))
    (tmp_path / "img/training_1.png").unlink()  # a missing image and a corrupt one: both in this one run
    _truncate(tmp_path / "img/validation_2.png")
    cmd = [sys.executable, "-m", "custom.cli", "check", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(tmp_path / "b"), "--mlflow", "false",
           "--datalist", json.dumps({"_target_": "custom.DataList", "path": str(path)}),
           "--classes", json.dumps(CLASSES)]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    row = "split 'training', row 4 (img/training_4.png): 'label' has length 2, expected 3 (one per class)"
    assert f"[FAIL] {DATALIST}: data list {path}: {row}" in lines
    assert f"[ ok ] {IDS}" in lines  # a data-list problem is not blamed on the config ids
    first = f"[FAIL] {IMAGES}: 2 image(s) of data list {path} are missing or unreadable"
    images = next(i for i, line in enumerate(lines) if line.startswith(first))
    assert lines[images + 1].strip() == f"{tmp_path / 'img/training_1.png'} (split 'training', row 1): file not found"
    assert lines[images + 2].strip().startswith(f"{tmp_path / 'img/validation_2.png'} (split 'validation', row 2): ")
    assert lines[-1].startswith("4/11 checks passed; failed: ")


def _check_and_train(tmp_path, path, **datalist):
    """What `check` prints for a data list, and what the training workflow does with it (its objects built)."""
    import warnings

    overrides = dict(_tiny_overrides(tmp_path, path),
                     datalist={"_target_": "custom.DataList", "path": str(path), **datalist})
    status = check(str(CONFIGS / "train.json"), **overrides)
    from custom.tools.training import train_parser

    parser = train_parser(overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser.get_parsed_content("loss")  # builds the data list and the class prior, as training does first
            parser.get_parsed_content("train#dataset")  # reads every training image
            parser.get_parsed_content("validate#dataset")
            training = None
        except Exception as e:
            training = e
    return status, training, [str(w.message) for w in caught]


def test_check_and_training_agree_on_errors_and_warnings(tmp_path, capsys):
    from custom.console import message, project_exception

    path = _list(tmp_path)
    doc = json.loads(path.read_text())
    for item in doc["training"]:
        item["label"][1] = 0  # class B has no training positive: a warning for both
    path.write_text(json.dumps(doc))
    status, training, warned = _check_and_train(tmp_path, path)
    out = capsys.readouterr().out
    assert status == 0 and training is None
    assert f"[warn] {POSITIVES}: classes without a positive training label" in out and "['B']" in out
    assert any("classes without positive training labels" in w and "['B']" in w for w in warned)
    # an unreadable image with on_bad_image='skip': skipped by training, a warning of check
    _truncate(tmp_path / "img/training_3.png")
    status, training, warned = _check_and_train(tmp_path, path, on_bad_image="skip")
    out = capsys.readouterr().out
    assert status == 0 and training is None
    assert f"[warn] {IMAGES}: 1 image(s) of data list {path} is missing or unreadable and will be skipped" in out
    # without it: an error for both
    status, training, _ = _check_and_train(tmp_path, path)
    out = capsys.readouterr().out
    assert status == 1 and f"[FAIL] {IMAGES}: 1 image(s)" in out
    assert message(project_exception(training)).startswith(f"cannot read image {tmp_path / 'img/training_3.png'}")
    # the same image in training and validation: an error for both, naming both places
    doc["validation"][0]["image"] = doc["training"][5]["image"]
    path.write_text(json.dumps(doc))
    status, training, _ = _check_and_train(tmp_path, path)
    out = capsys.readouterr().out
    both = "split 'validation', row 0: image img/training_5.png is also in split 'training', row 5"
    assert status == 1 and f"[FAIL] {DATALIST}: data list {path}: {both}" in out
    assert both in message(project_exception(training))
    # a data list that is not JSON: said so, by the data-list check
    path.write_text("{not json")
    status, training, _ = _check_and_train(tmp_path, path)
    out = capsys.readouterr().out
    assert status == 1 and f"[FAIL] {DATALIST}: data list {path} is not valid JSON" in out and f"[ ok ] {IDS}" in out
    assert message(project_exception(training)).startswith(f"data list {path} is not valid JSON")


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

    batches = [{"image": torch.randn(2, 1, 2, 2), "label": torch.ones(2, 3),
                "index": torch.tensor([2 * i, 2 * i + 1])} for i in range(3)]
    trainer = NVUMTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=batches, network=net,
                          optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=loss,
                          decollate=False)  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 2 .*dataset indices of the batch: \[2, 3\]"):
        trainer.run()


def test_resume_refuses_a_checkpoint_trained_on_other_classes():
    from custom.record import RunRecord

    here = RunRecord(["A", "B", "No Finding"], 10, "new.json")
    saved = RunRecord(["A", "C", "No Finding"], 10, "old.json").state_dict()
    with pytest.raises(DataListError, match=r"unknown to the checkpoint: \['B'\]; missing: \['C'\]"):
        here.check(saved, "ckpt.pt")
    here.check(RunRecord(["A", "B", "No Finding"], 10, "old.json").state_dict(),
               "ckpt.pt")  # same classes and size: fine


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from custom.files import atomic_path

    path = tmp_path / "probabilities.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def _link_rows(tmp_path, targets):
    """A data list whose training rows 1, 2, ... are links ``img/link_<i>.png`` to ``targets``."""
    path = _list(tmp_path)
    doc = json.loads(path.read_text())
    for i, target in enumerate(targets, start=1):
        link = tmp_path / f"img/link_{i}.png"
        link.symlink_to(target)
        doc["training"][i]["image"] = f"img/link_{i}.png"
    path.write_text(json.dumps(doc))
    return path


def test_links_out_of_dataset_dir_are_refused_by_the_data_list_naming_row_and_target(tmp_path):
    outside = _png(tmp_path / "elsewhere" / "x.png", 9)
    data = tmp_path / "data"
    path = _link_rows(data, [outside, pathlib.Path("/etc/passwd")])
    with pytest.raises(DataListError) as err:
        DataList(path)
    lines = [line.strip() for line in str(err.value).splitlines()]
    assert lines[0].startswith(f"data list {path}: split 'training', row 1: image path img/link_1.png is a link "
                               f"that leaves dataset_dir ({data}): it points to {outside}")
    assert lines[1].startswith(f"split 'training', row 2: image path img/link_2.png is a link that leaves "
                               f"dataset_dir ({data}): it points to /etc/passwd")
    dl = DataList(path, allow_absolute_paths=True, check_images=False)  # the option follows links
    assert dl.items("training")[1]["image"] == str(data / "img/link_1.png")


def test_a_folder_link_out_of_dataset_dir_is_refused_and_links_inside_it_are_fine(tmp_path):
    data = tmp_path / "data"
    path = _link_rows(data, [data / "img/training_0.png"])  # a link to an image inside: fine
    (tmp_path / "elsewhere").mkdir()
    _png(tmp_path / "elsewhere/x.png", 3)
    (data / "out").symlink_to(tmp_path / "elsewhere")
    assert len(DataList(path)) == 6
    doc = json.loads(path.read_text())
    doc["training"][2]["image"] = "out/x.png"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataListError, match=rf"row 2: image path out/x\.png goes through a linked folder that leaves "
                                            rf"dataset_dir \({data}\): it points to {tmp_path / 'elsewhere/x.png'}"):
        DataList(path)


def test_check_refuses_links_out_of_dataset_dir_before_any_image_is_decoded(tmp_path, capsys, monkeypatch):
    import custom.data.transforms as transforms

    outside = _png(tmp_path / "elsewhere" / "x.png", 9)
    data = tmp_path / "data"
    path = _link_rows(data, [outside, pathlib.Path("/etc/passwd")])
    decoded = []
    inspect = transforms.inspect_image
    monkeypatch.setattr(transforms, "inspect_image", lambda p, size=None: decoded.append(str(p)) or inspect(p, size))
    assert check(str(CONFIGS / "train.json"), **_tiny_overrides(data, path)) == 1
    out = capsys.readouterr().out
    assert (f"[FAIL] {DATALIST}: data list {path}: split 'training', row 1: image path img/link_1.png is a link that "
            f"leaves dataset_dir ({data}): it points to {outside}") in out
    assert f"image path img/link_2.png is a link that leaves dataset_dir ({data}): it points to /etc/passwd" in out
    assert f"[ ok ] {IMAGES}: all 7 images decode" in out  # the two links are not read: Pillow never sees them
    assert len(decoded) == 7 and not any("link_" in p for p in decoded) and "Pillow" not in out


def _degenerate_list(tmp_path):
    path = _list(tmp_path)
    doc = json.loads(path.read_text())
    Image.fromarray(np.full((1, 1), 80, np.uint8)).save(tmp_path / "img/training_2.png")  # 1 x 1
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "img/validation_1.png")  # all black
    return path, doc


def test_check_warns_about_tiny_and_constant_images_and_fails_on_them_with_refuse(tmp_path, capsys):
    from custom.console import message, project_exception

    path, _ = _degenerate_list(tmp_path)
    status, training, _ = _check_and_train(tmp_path, path)
    out = capsys.readouterr().out
    tiny, black = tmp_path / "img/training_2.png", tmp_path / "img/validation_1.png"
    assert status == 0 and training is None  # the default: a warning, and training goes on
    warn = next(line for line in out.splitlines() if line.startswith(f"[warn] {DEGENERATE}: "))
    assert "2 image(s) are degenerate" in warn
    assert f"{tiny} (1 x 1 pixels, a side under 1/4 of the network's 32 x 32 input; constant image, every" in warn
    assert f"{black} (constant image, every pixel 0)" in warn
    assert f"[ ok ] {IMAGES}: all 9 images decode" in out  # one pass: decodable, and degenerate
    status, training, _ = _check_and_train(tmp_path, path, on_degenerate_image="refuse", image_size="@image_size")
    out = capsys.readouterr().out
    assert status == 1
    first = f"[FAIL] {DEGENERATE}: 2 image(s) of data list {path} are degenerate"
    assert any(line.startswith(first) and "refused (on_degenerate_image='refuse')" in line for line in out.splitlines())
    assert str(tiny) in out and str(black) in out
    text = message(project_exception(training))
    assert isinstance(project_exception(training), DataListError)
    assert text.startswith(f"2 image(s) of data list {path} are degenerate")
    assert str(tiny) in text and str(black) in text
    with pytest.raises(ValueError, match="needs the network's input size"):
        DataList(path, on_degenerate_image="refuse")


def test_a_list_of_good_images_has_no_degenerate_warning(tmp_path, capsys):
    path = _list(tmp_path)
    assert check(str(CONFIGS / "train.json"), **_tiny_overrides(tmp_path, path)) == 0
    assert f"[ ok ] {DEGENERATE}: none" in capsys.readouterr().out
    assert len(DataList(path, on_degenerate_image="refuse", image_size=32)) == 6


def test_inference_lists_links_out_of_the_folder_and_degenerate_images_in_the_errors_file(tmp_path, capsys):

    from custom.serving.inference import InferenceDataset, list_inputs

    folder = tmp_path / "in"
    _png(folder / "a.png", 40)
    Image.fromarray(np.full((1, 1), 80, np.uint8)).save(folder / "b_tiny.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "c_black.png")
    outside = _png(tmp_path / "elsewhere/x.png", 9)
    (folder / "d_out.png").symlink_to(outside)
    (folder / "e_passwd.png").symlink_to("/etc/passwd")
    (folder / "f_in.png").symlink_to(folder / "a.png")  # a link inside the folder: read
    items = list_inputs(folder)
    assert [pathlib.Path(i["image"]).name for i in items] == ["a.png", "b_tiny.png", "c_black.png", "d_out.png",
                                                              "e_passwd.png", "f_in.png"]

    def run(policy):
        errors, scored, header = infer_with_stub(items, tmp_path / policy, CLASSES, batch_size=4, image_size=32,
                                                 degenerate_images=policy)
        assert header == ["image", *CLASSES]  # the probabilities file keeps its format
        return errors, scored, capsys.readouterr().out.strip().splitlines()[-1]

    errors, scored, last = run("warn")
    assert scored == [str(folder / n) for n in ("a.png", "b_tiny.png", "c_black.png", "f_in.png")]
    link = f"a link that leaves the input folder ({folder}): it points to {outside}; not read"
    assert errors[str(folder / "d_out.png")] == link
    assert errors[str(folder / "e_passwd.png")].endswith("it points to /etc/passwd; not read")
    assert errors[str(folder / "b_tiny.png")].startswith("degenerate image, scored all the same: 1 x 1 pixels")
    assert errors[str(folder / "c_black.png")] == "degenerate image, scored all the same: constant image, every pixel 0"
    errors_file = tmp_path / "warn" / "errors.csv"
    assert last == (f"wrote probabilities of 4 image(s) to {tmp_path / 'warn' / 'probs.csv'}; 2 skipped, refused; "
                    f"2 scored with a warning (degenerate) (see {errors_file})")
    errors, scored, last = run("refuse")
    assert scored == [str(folder / n) for n in ("a.png", "f_in.png")]
    assert errors[str(folder / "b_tiny.png")].startswith("degenerate image, not scored (degenerate_images='refuse')")
    assert last.endswith("; 4 skipped, refused (see " + str(tmp_path / "refuse" / "errors.csv") + ")")
    with pytest.raises(ImageReadError, match="d_out.png: a link that leaves the input folder"):
        InferenceDataset(items, inference_preprocessing(), strict=True)[3]
