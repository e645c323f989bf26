"""A real MONAI Label server (``monailabel start_server``) on the deployable bundle, against ``inference.json``.

Needs MONAI Label's own environment (``python -m custom.cli monailabel --install true`` builds it in
``~/venv-monailabel``, or ``$NVUM_MONAILABEL_VENV``); skipped where it is not there, as on a fresh CI machine."""

import shutil

import pytest

from conftest import train_tiny_bundle

pytestmark = pytest.mark.slow  # builds a bundle zip and starts a MONAI Label server


def test_monai_label_server_answers_with_the_probabilities_of_inference_json(tmp_path):
    from custom.tools.monailabel import DEFAULT_VENV, check, venv_ready

    if not venv_ready(DEFAULT_VENV):
        pytest.skip(f"no MONAI Label environment at {DEFAULT_VENV} (build it with "
                    "`python -m custom.cli monailabel --install true`, or set NVUM_MONAILABEL_VENV)")
    built = train_tiny_bundle(tmp_path / "run", tmp_path / "staging")
    studies = tmp_path / "studies"
    studies.mkdir()
    for png in sorted((tmp_path / "run" / "data" / "test").glob("*.png"))[:5]:
        shutil.copy(png, studies / png.name)
    # DICOM studies: a frontal radiograph scored by its datastore id, a lateral one refused with HTTP 400
    from test_dicom_guard import _dicom

    _dicom(studies / "frontal.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")
    _dicom(studies / "lateral.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="LL")
    result = check(str(built.zip), images=str(studies), work=str(tmp_path / "work"))
    # every file answered or refused, as inference.json scored or listed it (check compares both)
    assert result["images"] + len(result["refused"]) == 7 and result["images"] >= 5 and result["max_difference"] < 1e-5
    assert "image lateral (" in result["refused"]["lateral.dcm"]
    assert "refused: not a frontal chest radiograph: ViewPosition LL" in result["refused"]["lateral.dcm"]
    # the same file uploaded, named in the request's params: refused again, naming the file as the client named it
    assert "the uploaded file lateral.dcm (stored by MONAI Label as " in result["refused_uploads"]["lateral.dcm"]
    reason = result["refused"]["lateral.dcm"].split(" refused: ", 1)[1]
    assert result["refused_uploads"]["lateral.dcm"].endswith(f" refused: {reason}")
    assert result["labels"][0] == "atelectasis" and len(result["labels"]) == 14  # names of the metadata, lower-cased
