"""Messages that name the cause (issue 30, item 5): each bad input of the reliability page's table ends on a last
line that says what is wrong, not an errno or a guess."""

import base64
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from conftest import CONFIGS, ROOT

from custom.console import format_report


def _last_line(config, **override):
    wf = ConfigWorkflow(config_file=str(CONFIGS / config), workflow_type="infer", **override)
    with pytest.raises(Exception) as err:
        wf.initialize()
        wf.run()
    return format_report(err.value).splitlines()[-1]


def _inference(tmp_path, output_dir):
    (tmp_path / "in").mkdir(exist_ok=True)
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(tmp_path / "in" / "a.png")
    return _last_line("inference.json", bundle_root=str(tmp_path / "bundle"), input_path=str(tmp_path / "in"),
                      output_dir=str(output_dir))


def test_inference_output_dir_naming_a_file_or_under_one(tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert _inference(tmp_path, blocked) == (
        f"error: cannot write to the inference output folder (output_dir) {blocked}: it is a file, not a folder")
    assert _inference(tmp_path, blocked / "out") == (
        f"error: cannot write to the inference output folder (output_dir) {blocked}/out: {blocked} (above it) is a "
        "file, not a folder")


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder on a read-only file system: a read-only tmpfs where this machine lets the test mount one, else a
    folder whose writes raise OSError(EROFS) (simulated: Path.mkdir under it fails as on a read-only mount)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        original = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if folder in Path(self).parents:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    yield folder
    if mounted.returncode == 0:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_output_folder_to_make_on_a_read_only_file_system(tmp_path, read_only):
    out = read_only / "new"
    assert _inference(tmp_path, out) == (
        f"error: cannot write to the inference output folder (output_dir) {out} (it does not exist and {out} could "
        "not be made): the file system is read-only")


def test_a_data_uri_cell_is_read_as_the_image_it_holds():
    from custom.serving.pyfunc import decode_image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    encoded = base64.b64encode(buf.getvalue()).decode()
    plain = decode_image(encoded, "row 0")
    assert np.array_equal(decode_image(f"data:image/png;base64,{encoded}", "row 0"), plain)
    with pytest.raises(ValueError) as err:
        decode_image("data:image/png;base64,@@@@", "row 1")
    assert str(err.value) == ("row 1: expected the image's bytes (PNG, JPEG, DICOM or .npy), base64-encoded, e.g. "
                              "$(base64 -w0 image.png); got the text 'data:image/png;base64,@@@@' (a data URI whose "
                              "data after ';base64,' is not valid base64)")
    with pytest.raises(ValueError) as err:
        decode_image("data:image/png,%89PNG", "row 2")
    assert str(err.value) == ("row 2: a data URI must hold base64 (data:<type>;base64,<data>), got "
                              "'data:image/png,%89PNG'")


def test_a_dicom_without_pixel_data_says_it_holds_no_image(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    from custom.data.dicom import read_dicom

    with pytest.raises(Exception) as err:
        read_dicom(path)
    assert format_report(err.value).splitlines()[-1] == (
        f"error: {path}: the DICOM file holds no image: it has no pixel data element (7FE0,0010) (SOP class Basic "
        "Text SR Storage); send the radiograph's image file")


def test_the_configs_run_from_another_folder(tmp_path, monkeypatch):
    """train.json from another folder, with the code on PYTHONPATH and the outputs under --bundle_root: a real
    ``python -m monai.bundle`` run (MONAI reads ``%`` file macros relative to the working folder: the configs have
    none), which writes under bundle_root only; a repository file named relatively is then named with its path."""
    away, env = tmp_path / "away", {**os.environ, "PYTHONPATH": str(ROOT), "NVUM_CACHE_DIR": str(tmp_path / "cache")}
    away.mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(away / "run"), "--max_epochs", "1", "--datalist#num_training", "32",
           "--datalist#num_validation", "16", "--datalist#num_test", "8", "--datalist#num_test_shifted", "8",
           "--test_and_deploy", "false", "--mlflow", "false", "--num_workers", "0"]
    done = subprocess.run(cmd, cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (away / "run" / "models" / "model.pt").is_file() and os.listdir(away) == ["run"]
    monkeypatch.chdir(away)
    with pytest.raises(FileNotFoundError) as err:
        open("data_lists/nih_nih14.json.gz")
    assert format_report(err.value).splitlines()[-1] == (
        f"error: data_lists/nih_nih14.json.gz is not found from the working folder {away}: it is the repository's "
        f"{ROOT / 'data_lists' / 'nih_nih14.json.gz'}; give that full path or run from the repository root")
    monkeypatch.chdir(ROOT)  # from the root, a missing name is Python's own error
    with pytest.raises(FileNotFoundError) as err:
        open("bundle/configs/nothing.json")
    assert format_report(err.value).splitlines()[-1] == (
        "error: [Errno 2] No such file or directory: 'bundle/configs/nothing.json'")


