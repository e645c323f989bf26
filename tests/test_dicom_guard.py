"""The DICOM input guard: a CT slice, a lateral chest view and an abdomen radiograph are refused from their
headers (inference's errors file, the served model's HTTP 400, the MONAI Deploy series selection), a frontal
chest DX is scored, an HTML page named .dcm is "not a DICOM file", and $NVUM_DICOM_GUARD=0 (or inference.json's
``dicom_guard``) lets the refused files through."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from conftest import CONFIGS, ROOT, infer_with_stub, inference_preprocessing
from test_dicom import write_dicom

from custom.data.dicom import DICOM_GUARD_ENV, dicom_guard_enabled, guard_file, guard_reason
from custom.data.transforms import ImageReadError, check_image

CT = "not a chest radiograph: Modality CT (expected CR, DX or RG)"
LATERAL = ("not a frontal chest radiograph: ViewPosition LL is a lateral view (the model was trained on frontal "
           "PA/AP views)")
ABDOMEN = "not a chest radiograph: BodyPartExamined ABDOMEN (expected CHEST or THORAX)"
HTML = "not a DICOM file (named .dcm but without the DICOM marker 'DICM' at byte 128)"
#: file name -> the reason it is refused (None: scored)
EXPECTED = {"a_ct.dcm": CT, "b_lateral.dcm": LATERAL, "c_abdomen.dcm": ABDOMEN, "d_chest_pa.dcm": None}


def _dicom(path, **header):
    """A 32 x 32 DX DICOM file (a gradient: not degenerate) with the header attributes ``header``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, np.add.outer(np.arange(32), np.arange(32)) * 4)
    ds = pydicom.dcmread(path)
    for key, value in header.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _inputs(folder: Path) -> Path:
    _dicom(folder / "a_ct.dcm", Modality="CT", BodyPartExamined="CHEST")
    _dicom(folder / "b_lateral.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="LL")
    _dicom(folder / "c_abdomen.dcm", Modality="CR", BodyPartExamined="ABDOMEN", ViewPosition="AP")
    _dicom(folder / "d_chest_pa.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")
    (folder / "e_page.dcm").write_text("<!DOCTYPE html><html><body>Login required</body></html>\n" * 5)
    return folder


def _header(**attrs):
    ds = pydicom.Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower-case spellings, on purpose
def test_guard_reason_reads_modality_body_part_and_view_position(tmp_path):
    folder = _inputs(tmp_path)
    for name, reason in EXPECTED.items():
        assert guard_file(folder / name) == reason, name
        assert guard_file((folder / name).read_bytes()) == reason, name  # the served model's bytes
    # accepted spellings: RG (digitised film), case and variants of chest, no BodyPartExamined, no ViewPosition
    for attrs in ({"Modality": "RG"}, {"Modality": "cr", "BodyPartExamined": "Thorax"},
                  {"Modality": "DX", "BodyPartExamined": "chest ", "ViewPosition": "AP"},
                  {"Modality": "DX", "BodyPartExamined": "", "ViewPosition": "LLD"}):
        assert guard_reason(_header(**attrs)) is None, attrs
    for view in ("RL", "LATERAL", "lat", "LEFT LATERAL"):
        assert "is a lateral view" in guard_reason(_header(Modality="DX", ViewPosition=view)), view
    assert guard_reason(_header()) == "not a chest radiograph: Modality missing (expected CR, DX or RG)"
    assert guard_reason(_header(Modality="MR", BodyPartExamined="HEAD")) == (
        "not a chest radiograph: Modality MR (expected CR, DX or RG); "
        "not a chest radiograph: BodyPartExamined HEAD (expected CHEST or THORAX)")
    assert check_image(folder / "e_page.dcm") == HTML
    assert check_image(folder / "d_chest_pa.dcm") is None


def test_the_switch_is_on_by_default_and_named_when_misspelt(monkeypatch):
    monkeypatch.delenv(DICOM_GUARD_ENV, raising=False)
    assert dicom_guard_enabled()
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv(DICOM_GUARD_ENV, off)
        assert not dicom_guard_enabled()
    monkeypatch.setenv(DICOM_GUARD_ENV, "maybe")
    with pytest.raises(ValueError, match=r"\$NVUM_DICOM_GUARD must be 1 .* or 0 .*, got 'maybe'"):
        dicom_guard_enabled()


def _infer(items, out: Path, classes, **dataset):
    """Run the inference dataset and writer with a stand-in network; ``(errors, scored names)``."""
    errors, scored, _ = infer_with_stub(items, out, classes, **dataset)
    return {Path(k).name: v for k, v in errors.items()}, [Path(p).name for p in scored]


def test_inference_lists_refused_dicom_files_in_the_errors_file_and_scores_the_frontal_chest(tmp_path, capsys,
                                                                                           monkeypatch):
    import json

    from custom.serving.inference import InferenceDataset, list_inputs

    monkeypatch.delenv(DICOM_GUARD_ENV, raising=False)
    classes = json.loads((CONFIGS / "common.json").read_text())["classes"]
    folder = _inputs(tmp_path / "in")
    items = list_inputs(folder)
    errors, scored = _infer(items, tmp_path / "on", classes)
    assert scored == ["d_chest_pa.dcm"]
    assert errors == {"a_ct.dcm": CT, "b_lateral.dcm": LATERAL, "c_abdomen.dcm": ABDOMEN, "e_page.dcm": HTML}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote probabilities of 1 image(s)" in last and "1 skipped, unreadable; 3 skipped, refused" in last
    with pytest.raises(ImageReadError, match=r"a_ct.dcm: not a chest radiograph: Modality CT"):
        InferenceDataset(items, inference_preprocessing(), strict=True)[0]
    # the switch: inference.json's dicom_guard (false on the command line), or $NVUM_DICOM_GUARD=0
    errors, scored = _infer(items, tmp_path / "off", classes, dicom_guard="false")
    assert scored == ["a_ct.dcm", "b_lateral.dcm", "c_abdomen.dcm", "d_chest_pa.dcm"]
    assert errors == {"e_page.dcm": HTML}  # not a DICOM file, whatever the switch
    monkeypatch.setenv(DICOM_GUARD_ENV, "0")
    errors, scored = _infer(items, tmp_path / "env", classes)
    assert scored == ["a_ct.dcm", "b_lateral.dcm", "c_abdomen.dcm", "d_chest_pa.dcm"]


def test_inference_json_dicom_guard_follows_the_environment(monkeypatch):
    from monai.bundle import ConfigParser

    for env, expected in ((None, True), ("0", False)):
        if env is None:
            monkeypatch.delenv(DICOM_GUARD_ENV, raising=False)
        else:
            monkeypatch.setenv(DICOM_GUARD_ENV, env)
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        assert parser.get_parsed_content("dicom_guard") is expected
        assert parser.get("dataset")["dicom_guard"] == "@dicom_guard"


def test_the_served_model_refuses_each_guarded_dicom_as_a_bad_row(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from monai.transforms import Compose

    from custom.data.transforms import ChestXrayToTensord
    from custom.serving.pyfunc import ChestXrayClassifier, decode_image

    monkeypatch.delenv(DICOM_GUARD_ENV, raising=False)
    folder = _inputs(tmp_path)
    names = list(EXPECTED)
    for i, name in enumerate(names):
        data = (folder / name).read_bytes()
        if EXPECTED[name]:
            with pytest.raises(ValueError) as err:
                decode_image(data, f"row {i}")
            assert str(err.value) == f"row {i}: {EXPECTED[name]}"
            assert decode_image(data, f"row {i}", dicom_guard=False).shape == (1, 32, 32)
        else:
            assert decode_image(data, f"row {i}").shape == (1, 32, 32)
    model = ChestXrayClassifier()
    model.classes = ["a", "b", "c"]
    model.preprocess = Compose([ChestXrayToTensord(keys="image", size=8)])
    model.postprocess = lambda d: {"pred": torch.sigmoid(d["pred"])}
    model.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    request = pd.DataFrame({"image": [(folder / name).read_bytes() for name in names]})
    with pytest.raises(MlflowException) as err:
        model.predict(None, request)
    assert err.value.get_http_status_code() == 400
    assert err.value.message == f"row 0: {CT} (and 2 more bad row(s): row 1: {LATERAL}; row 2: {ABDOMEN})"
    assert model.predict(None, request.iloc[3:]).shape == (1, 3)
    monkeypatch.setenv(DICOM_GUARD_ENV, "0")
    assert model.predict(None, request).shape == (4, 3)


def _deploy_io():
    spec = importlib.util.spec_from_file_location("nvum_bundle_deploy_io", ROOT / "bundle/scripts/deploy_io.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_series_selection_keeps_only_frontal_chest_radiographs(tmp_path, monkeypatch):
    from PIL import Image

    io = _deploy_io()
    monkeypatch.delenv(DICOM_GUARD_ENV, raising=False)
    folder = _inputs(tmp_path)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(folder / "f.png")
    selected, refused = io.select_images(io.list_images(folder))
    assert [p.name for p in selected] == ["d_chest_pa.dcm", "f.png"]
    assert [(p.name, reason) for p, reason in refused] == [("a_ct.dcm", CT), ("b_lateral.dcm", LATERAL),
                                                           ("c_abdomen.dcm", ABDOMEN), ("e_page.dcm", HTML)]
    selected, refused = io.select_images(io.list_images(folder), dicom_guard=False)
    assert len(selected) == 5 and [(p.name, reason) for p, reason in refused] == [("e_page.dcm", HTML)]
    monkeypatch.setenv(DICOM_GUARD_ENV, "0")
    assert len(io.select_images(io.list_images(folder))[0]) == 5


def _label_app(monkeypatch):
    """The bundle's MONAI Label app with MONAI Label's classes stood in for (MONAI Label lives in an environment of
    its own): the stock task answers "scored" and the image it was given; the app's ``infer`` resolves an id in a
    studies folder and turns a folder into a list of paths as MONAI Label 0.8.5 does, then runs the task."""
    import sys
    import types

    class BundleInferTask:
        def __init__(self, path, conf, **kwargs):
            pass

        def __call__(self, request, *args, **kwargs):
            return "scored", {"image": request["image"]}

    class MONAILabelApp:
        def infer(self, request, datastore=None):
            image = request["image"]
            image = image if os.path.exists(image) else self.datastore().get_image_uri(image)
            if os.path.isdir(image):  # (sic: MONAI Label joins the folder onto each name)
                image = [os.path.join(f, image) for f in os.listdir(image)]
            return self.task({**request, "image": image})

    stubs = {"monailabel": types.ModuleType("monailabel"),
             "monailabel.interfaces": types.ModuleType("monailabel.interfaces"),
             "monailabel.interfaces.app": types.SimpleNamespace(MONAILabelApp=MONAILabelApp),
             "monailabel.tasks": types.ModuleType("monailabel.tasks"),
             "monailabel.tasks.infer": types.ModuleType("monailabel.tasks.infer"),
             "monailabel.tasks.infer.bundle": types.SimpleNamespace(BundleInferTask=BundleInferTask)}
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("nvum_monailabel_app", ROOT / "bundle/scripts/monailabel_app/main.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    monkeypatch.delenv(DICOM_GUARD_ENV, raising=False)
    return app


def test_the_monai_label_task_refuses_a_guarded_dicom_naming_the_reason(tmp_path, monkeypatch):
    from fastapi import HTTPException

    app = _label_app(monkeypatch)
    folder = _inputs(tmp_path)
    task = app.MultiLabelBundleInferTask(str(ROOT), {})
    assert task({"image": str(folder / "d_chest_pa.dcm")})[0] == "scored"
    with pytest.raises(HTTPException) as err:  # MONAI Label's server answers it with HTTP 400 and the detail
        task({"image": str(folder / "b_lateral.dcm")})
    assert err.value.status_code == 400 and err.value.detail == (
        f"nvum_cxr_classification: image {folder / 'b_lateral.dcm'} refused: {LATERAL} (NVUM_DICOM_GUARD=0 on the "
        "server lets it through)")
    monkeypatch.setenv(DICOM_GUARD_ENV, "0")
    assert task({"image": str(folder / "b_lateral.dcm")})[0] == "scored"


def test_the_monai_label_app_names_the_image_sent_and_guards_a_dicom_series_sent_as_a_folder(tmp_path, monkeypatch):
    import shutil
    import tempfile
    import types

    from fastapi import HTTPException

    app = _label_app(monkeypatch)
    studies = _inputs(tmp_path / "studies")
    label = app.NVUMApp.__new__(app.NVUMApp)  # (its __init__ is MONAI Label's server start)
    label.task = app.MultiLabelBundleInferTask(str(ROOT), {})
    label.datastore = lambda: types.SimpleNamespace(get_image_uri=lambda i: str(studies / f"{i}.dcm"))

    def refused(image):
        with pytest.raises(HTTPException) as err:
            label.infer({"model": "nvum_cxr_classification", "image": image})
        assert err.value.status_code == 400
        return err.value.detail

    suffix = " (NVUM_DICOM_GUARD=0 on the server lets it through)"
    assert refused("b_lateral") == (f"nvum_cxr_classification: image b_lateral ({studies / 'b_lateral.dcm'}) "
                                    f"refused: {LATERAL}{suffix}")  # the id sent, and the file it names
    upload = Path(tempfile.mkstemp(suffix=".dcm", prefix="tmp")[1])  # how MONAI Label stores an upload
    try:
        shutil.copy(studies / "a_ct.dcm", upload)
        assert refused(str(upload)) == (f"nvum_cxr_classification: the uploaded file (stored by MONAI Label as "
                                        f"{upload}) refused: {CT}{suffix}")
        named = {"model": "nvum_cxr_classification", "image": str(upload), "file_name": "knee_ct.dcm"}  # its params
        with pytest.raises(HTTPException) as err:
            label.infer(named)
        assert err.value.detail == (f"nvum_cxr_classification: the uploaded file knee_ct.dcm (stored by MONAI Label "
                                    f"as {upload}) refused: {CT}{suffix}")
    finally:
        upload.unlink()
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(studies / "d_chest_pa.dcm", series / "1.dcm")
    assert label.infer({"image": str(series)}) == ("scored", {"image": str(series / "1.dcm")})  # its one image
    shutil.copy(studies / "b_lateral.dcm", series / "2.dcm")
    assert refused(str(series)) == f"nvum_cxr_classification: image {series} refused: 2.dcm in it: {LATERAL}{suffix}"
    (series / "2.dcm").unlink()
    shutil.copy(studies / "d_chest_pa.dcm", series / "3.dcm")
    assert refused(str(series)) == (f"nvum_cxr_classification: image {series} refused: a folder holding 2 images "
                                    "(1.dcm, 3.dcm); the model scores one radiograph per request: send one file")
    (tmp_path / "page.png").write_text("<html>not an image</html>")  # unreadable: a 400 too, not a bare 500
    assert refused(str(tmp_path / "page.png")) == (f"nvum_cxr_classification: image {tmp_path / 'page.png'} refused: "
                                                   "not an image file Pillow can read (expected PNG or JPEG)")


def test_the_monai_label_check_asks_for_every_file_inference_reads_dicom_included(tmp_path):
    import json

    from custom.tools.monailabel import compare, label_env, studies_requests

    studies = _inputs(tmp_path / "studies")  # four DICOM files and an HTML page named .dcm
    (studies / "f.png").write_bytes(b"")
    (studies / "g.jpeg").write_bytes(b"")
    _dicom(studies / "series" / "h.dcm", Modality="DX")
    _dicom(studies / "i_no_suffix", Modality="DX")
    # by the datastore's id where it lists the file, else by its path; the datastore set to list DICOM and .jpeg
    assert studies_requests(studies) == {
        "a_ct.dcm": "a_ct", "b_lateral.dcm": "b_lateral", "c_abdomen.dcm": "c_abdomen", "d_chest_pa.dcm": "d_chest_pa",
        "e_page.dcm": "e_page", "f.png": "f", "g.jpeg": "g", "i_no_suffix": str(studies / "i_no_suffix"),
        "series/h.dcm": str(studies / "series" / "h.dcm")}
    exts = json.loads(label_env({"PATH": "/bin"})["MONAI_LABEL_DATASTORE_FILE_EXT"])
    assert {"*.dcm", "*.jpeg", "*.png", "*.jpg"} <= set(exts)
    reference, errors = {"d.dcm": [0.25, 0.5]}, {"b.dcm": LATERAL}
    assert compare(reference, errors, {"d.dcm": [0.25, 0.5 + 3e-7]}, {"b.dcm": "refused: ..."}) == pytest.approx(3e-7)
    with pytest.raises(RuntimeError, match=r"MONAI Label answered for \['b.dcm', 'd.dcm'\] and refused \[\]"):
        compare(reference, errors, {"d.dcm": [0.25, 0.5], "b.dcm": [0.1, 0.1]}, {})
