"""What a user reads when a bundle command fails: the last line is the project's message (file,
split, row, key, reason), for every bad input of the bad-input table (bundle/docs/reliability.md)."""

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from conftest import CONFIGS, ROOT

from custom.console import exception_chain, format_report, project_exception

CLASSES = ["A", "B", "No Finding"]


def _png(path, value=0, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def bomb_png(width=20000, height=20000) -> bytes:
    """A valid PNG header claiming width x height pixels (a few hundred bytes): a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND",
                                                                                                             b"")


def _list(tmp_path, n_train=6, n_val=3):
    splits = {}
    for split, n in (("training", n_train), ("validation", n_val)):
        splits[split] = []
        for i in range(n):
            image = f"img/{split}_{i}.png"
            _png(tmp_path / image, value=10 * i)
            label = [1 if c == i % len(CLASSES) else 0 for c in range(len(CLASSES))]
            splits[split].append({"image": image, "label": label, "patient": f"{split}{i}"})
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"classes": CLASSES, **splits}))
    return path


def _edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _train(tmp_path, path, **override):
    """Run train.json as `python -m monai.bundle run training` does; the report's last line when it fails."""
    override = {"bundle_root": str(tmp_path / "bundle"), "mlflow": False, "max_epochs": 1, "batch_size": 4,
                "test_and_deploy": False,  # the list has no test split
                "datalist": {"_target_": "custom.DataList", "path": str(path)}, "classes": CLASSES, **override}
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", **override)
    with pytest.raises(Exception) as err:
        wf.initialize()
        wf.run()
    report = format_report(err.value)
    assert "Failed to instantiate" in report or "Traceback" in report  # MONAI's wrapping is still in the chain
    return report.splitlines()[-1]


def _truncate(path):
    """An image whose pixel data stops half-way (its header is complete)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set(split, row, **values):
    """A change of one item of the data list."""
    return lambda t, p: _edit(p, lambda d: d[split][row].update(values))


LIST = "error: data list {tmp}/list.json"  # how the messages about the list begin
READ = "error: cannot read image {tmp}/img/"
# (case, change to the files, the last line expected; {tmp} is the data folder)
CASES = [
    ("missing image", lambda t, p: (t / "img/training_2.png").unlink(),
     "error: 1 image(s) of data list {tmp}/list.json is not found; "
     "the first: {tmp}/img/training_2.png (split 'training', row 2): file not found"),
    ("truncated image", lambda t, p: _truncate(t / "img/training_1.png"),
     READ + "training_1.png: corrupt or truncated image data (image file is truncated)"),
    ("not an image", lambda t, p: (t / "img/training_0.png").write_text("<html>not found</html>"),
     READ + "training_0.png: not an image file Pillow can read (expected PNG or JPEG)"),
    ("20000 x 20000 image", lambda t, p: (t / "img/training_3.png").write_bytes(bomb_png()),
     READ + "training_3.png: too large to decode safely (Pillow refuses a possible decompression bomb): "
     "Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack."),
    ("label of the wrong length", _set("training", 4, label=[1, 0]),
     LIST + ": split 'training', row 4 (img/training_4.png): 'label' has length 2, expected 3 (one per class)"),
    ("non-binary label", _set("validation", 1, label=[0, 2, 0]),
     LIST + ": split 'validation', row 1 (img/validation_1.png): 'label' must hold only 0/1 values, got [0, 2, 0]"),
    ("unknown item key", _set("training", 0, view="PA"),
     LIST + ": split 'training', row 0: unknown key(s) ['view']; "
     "allowed keys are ['clean_label', 'image', 'label', 'patient']"),
    ("empty validation split", lambda t, p: _edit(p, lambda d: d.update(validation=[])),
     LIST + ": no items in required split 'validation'"),
    ("duplicate class names", lambda t, p: _edit(p, lambda d: d.update(classes=["A", "A", "No Finding"])),
     LIST + ": class name(s) ['A'] listed more than once in 'classes'"),
    ("the same image twice in a split", _set("training", 3, image="img/training_1.png"),
     LIST + ": split 'training', row 3: image img/training_1.png is listed twice (also row 1)"),
    ("the same image in training and validation", _set("validation", 0, image="img/training_5.png"),
     LIST + ": split 'validation', row 0: image img/training_5.png is also in split 'training', row 5; "
     "an image in two splits leaks what the network trained on into what it is judged on"),
    ("a patient in two splits", _set("validation", 2, patient="training1"),
     LIST + ": 1 patient(s) appear in more than one split: training1 in ['training', 'validation']"),
    ("a path leaving dataset_dir", _set("training", 2, image="../../etc/x.png"),
     LIST + ": split 'training', row 2: image path ../../etc/x.png leaves dataset_dir ({tmp}); "
     "paths must stay inside it"),
    ("an absolute path", _set("training", 2, image="/etc/hostname"),
     LIST + ": split 'training', row 2: image path /etc/hostname is absolute; image paths are relative to "
     "dataset_dir ({tmp}) (set 'allow_absolute_paths': true in the custom.DataList to accept absolute paths)"),
    ("a data list that is not JSON", lambda t, p: p.write_text("{'classes': ['A'],"),
     LIST + " is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
]


@pytest.mark.parametrize("case, change, expected", CASES, ids=[c[0] for c in CASES])
def test_training_on_bad_input_ends_with_the_projects_message(tmp_path, case, change, expected):
    path = _list(tmp_path)
    change(tmp_path, path)
    assert _train(tmp_path, path) == expected.format(tmp=tmp_path)


def test_bad_run_settings_end_with_the_projects_message(tmp_path):
    path = _list(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": np.zeros(3)}, evil)  # a pickled object beside the tensors
    last = _train(tmp_path, path, pretrained_weights=str(evil))
    assert last.startswith(f"error: cannot read weights file {evil}: it holds a pickled Python object (numpy.")
    assert "weights_only=False" not in last and "save a state dict" in last  # never the advice to load it unsafely
    last = _train(tmp_path, path, resume=True)
    folder = tmp_path / "bundle" / "models"
    assert last == f"error: --resume: no training checkpoint (checkpoint_epoch=K.pt) in {folder}"
    torch.save({"model": {}}, tmp_path / "other.pt")
    last = _train(tmp_path, path, resume=str(tmp_path / "other.pt"))
    assert last.startswith(f"error: checkpoint {tmp_path / 'other.pt'} has no ['teacher', 'memory',")


def test_setups_that_would_fail_after_the_work_stop_before_it(tmp_path):
    """No test split while test_and_deploy is on, a last batch of one image under batch norm, an output folder
    that cannot be written, invalid numbers: each stops before the first epoch, naming the setting."""
    path = _list(tmp_path)  # 6 training images, no test split
    models = tmp_path / "bundle" / "models"
    last = _train(tmp_path, path, test_and_deploy=True)
    assert last.startswith(f"error: data list {path} has no test split to evaluate")
    assert "--test_and_deploy false" in last
    last = _train(tmp_path, path, batch_size=5)
    assert last.startswith("error: 6 training images in batches of 5 (batch_size) leave a last batch of 1 image")
    assert "e.g. 4 or 6" in last
    assert not list(models.glob("*.pt"))  # nothing was trained
    blocked = tmp_path / "a_file"  # a folder that cannot be made (as root, a read-only mode would not stop a write)
    blocked.write_text("not a folder")
    last = _train(tmp_path, path, bundle_root=str(blocked))
    assert last == (f"error: cannot write to the output folder (bundle_root) {blocked}: it is a file, not a folder")
    last = _train(tmp_path, path, bundle_root=str(blocked / "under"))  # a path under a file
    assert last == (f"error: cannot write to the output folder (bundle_root) {blocked}/under: {blocked} (above it) "
                    "is a file, not a folder")
    last = _train(tmp_path, path, image_size=0)
    assert last == "error: invalid setting: image_size must be a positive integer, got 0"
    last = _train(tmp_path, path, max_epochs=0)
    assert last == "error: invalid setting: max_epochs must be a positive integer, got 0"
    last = _train(tmp_path, path, learning_rate=float("nan"))  # PyTorch's optimiser refuses it first
    assert last == "error: Invalid learning rate: nan"


def test_invalid_numbers_on_the_command_line_are_named():
    from custom.config import check_bundle_command
    from custom.flags import InvalidSettingError, check_settings

    with pytest.raises(InvalidSettingError, match="learning_rate must be a positive finite number, got 'nan'"):
        check_bundle_command(["run", "training", "--config_file", str(CONFIGS / "train.json"),
                              "--learning_rate", "nan"])

    check_settings({"image_size": "64", "learning_rate": "1e-3", "batch_size": 16, "seed": "$1 + 1"})
    with pytest.raises(InvalidSettingError) as err:
        check_settings({"image_size": "0", "learning_rate": "nan", "batch_size": "true", "max_epochs": "2.5"})
    assert str(err.value) == (
        "invalid settings: image_size must be a positive integer, got '0'; learning_rate must be a positive finite "
        "number, got 'nan'; batch_size must be a positive integer, got 'true'; max_epochs must be a positive "
        "integer, got '2.5'")


def test_report_picks_the_innermost_project_error_and_shows_its_details_above_the_last_line(tmp_path):
    from custom.data import DataList

    path = _list(tmp_path)
    (tmp_path / "img/training_1.png").unlink()
    (tmp_path / "img/validation_2.png").unlink()
    try:
        try:
            DataList(path)
        except FileNotFoundError as inner:
            raise RuntimeError("Failed to instantiate component 'custom.DataList'") from inner
    except RuntimeError as e:
        outer = e
    chain, report, full = exception_chain(outer), format_report(outer), format_report(outer, full=True)
    assert [type(e).__name__ for e in chain] == ["RuntimeError", "FileNotFoundError"]
    assert project_exception(outer) is chain[1]
    lines = report.splitlines()
    assert lines[0].startswith("Traceback, condensed (NVUM_TRACEBACK=1")
    assert lines[1] == "  RuntimeError: Failed to instantiate component 'custom.DataList'"
    assert lines[2].startswith("  FileNotFoundError: 2 image(s) of data list")
    assert "[raised at custom/data/datalist.py:" in lines[2]
    assert lines[-4:-1] == ["details:", f"  {tmp_path}/img/training_1.png (split 'training', row 1): file not found",
                            f"  {tmp_path}/img/validation_2.png (split 'validation', row 2): file not found"]
    assert lines[-1] == (f"error: 2 image(s) of data list {path} are not found; the first: "
                         f"{tmp_path}/img/training_1.png (split 'training', row 1): file not found")
    assert "Traceback (most recent call last)" in full and full.splitlines()[-1] == lines[-1]
    # no project frame in the chain: the innermost exception is the one named
    try:
        try:
            int("x")
        except ValueError as e:
            raise RuntimeError("wrapper") from e
    except RuntimeError as e:
        assert format_report(e).splitlines()[-1] == "error: invalid literal for int() with base 10: 'x'"


def _command(args, tmp_path, **env):
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **env)
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    return out.returncode, out.stdout.rstrip().splitlines()


@pytest.mark.slow
def test_the_bundle_command_and_the_tools_end_on_the_projects_message(tmp_path):
    path = _list(tmp_path)
    (tmp_path / "img/validation_0.png").write_bytes(bomb_png())
    datalist = json.dumps({"_target_": "custom.DataList", "path": str(path)})
    train = ["monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
             "--bundle_root", str(tmp_path / "b"), "--mlflow", "false", "--max_epochs", "1", "--datalist", datalist,
             "--classes", json.dumps(CLASSES)]
    expected = f"error: cannot read image {tmp_path}/img/validation_0.png: too large to decode safely"
    code, lines = _command(train, tmp_path)
    assert code == 1 and lines[-1].startswith(expected), lines[-30:]
    assert "Traceback (most recent call last)" not in "\n".join(lines) and len(lines) < 60  # condensed
    code, lines = _command(train, tmp_path, NVUM_TRACEBACK="1")
    assert code == 1 and lines[-1].startswith(expected) and "Traceback (most recent call last):" in lines
    # a tool: the audit of a file that is no training checkpoint
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    code, lines = _command(["custom.cli", "audit", "--checkpoint", str(tmp_path / "model.pt")], tmp_path)
    assert code == 1
    assert lines[-1] == (f"error: checkpoint {tmp_path / 'model.pt'} holds no NVUM memory (key 'memory'); "
                         "audit the resume checkpoint checkpoint_epoch=K.pt of a training run, "
                         "not the bare weights in model.pt")


def test_only_the_known_third_party_noise_is_filtered():
    import importlib
    import warnings

    from custom.console import filter_third_party_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_third_party_noise()
        warnings.warn("The given NumPy array is not writable, and PyTorch does not support non-writable tensors.",
                      UserWarning)
        warnings.warn("No hash value provided for /b/docs/meta_schema_20240725.json; file integrity is NOT verified.",
                      UserWarning)
        warnings.warn("No hash value provided for /b/model.pt; file integrity is NOT verified.", UserWarning)
        warnings.warn("classes without positive training labels get prior 0.1: ['B']", UserWarning)
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. Falling "
                      "back to default pydicom decoders.", UserWarning)
        from monai.data import PydicomReader

        PydicomReader()  # MONAI's DICOM reader: it warns on every CPU machine that NVIDIA's decoder is absent
        import custom.serving.pyfunc

        importlib.reload(custom.serving.pyfunc)  # MLflow checks the model class's type hints when it is defined
    assert [str(w.message) for w in caught] == [
        "No hash value provided for /b/model.pt; file integrity is NOT verified.",
        "classes without positive training labels get prior 0.1: ['B']"]


def test_the_dicom_decoder_notice_is_silenced_and_other_monai_warnings_are_not(caplog):
    import logging

    from monai.data.nvimgcodec_pydicom_plugin import register_as_decoder_plugin

    import custom  # noqa: F401  (importing the package installs the filters)

    with caplog.at_level(logging.WARNING):
        register_as_decoder_plugin()  # no CUDA here: MONAI logs that NVIDIA's GPU decoder is absent
        logging.getLogger("monai.data").warning("a MONAI warning that stays")
    messages = [r.getMessage() for r in caplog.records]
    assert "nvImageCodec is not available; skipping pydicom decoder plugin registration." not in messages
    assert "a MONAI warning that stays" in messages


def test_logging_the_mlflow_model_drops_only_its_pickling_notice():
    import logging

    from custom.deploy.registry import quiet_mlflow_logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addHandler(handler)
    try:
        with quiet_mlflow_logging():
            assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
            logger.warning("Passing a Python object as `python_model` causes it to be serialized using CloudPickle")
            logger.warning("something MLflow means")
        logger.warning("Passing a Python object as `python_model` outside")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something MLflow means", "Passing a Python object as `python_model` outside"]
    assert os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") != "false"  # restored


def test_the_report_waits_for_pool_workers_still_holding_an_item():
    """A terminated thread pool's workers finish their item before the report (else the process aborts)."""
    import threading
    import time
    from multiprocessing.pool import ThreadPool

    from custom.console import settle_pool_workers

    started, done = threading.Event(), threading.Event()

    def slow(_):
        started.set()
        time.sleep(0.5)
        done.set()

    pool = ThreadPool(1)
    pool.map_async(slow, [0])
    started.wait(5)
    pool.terminate()  # as `with ThreadPool(...)` does when another item raised
    assert not done.is_set()
    settle_pool_workers()
    assert done.is_set()
