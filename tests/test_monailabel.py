"""A real MONAI Label server (``monailabel start_server``) on the deployable bundle, against ``inference.json``.

Needs MONAI Label's own environment (``python -m custom.tools.monailabel --install true`` builds it in
``~/venv-monailabel``, or ``$NVUM_MONAILABEL_VENV``); skipped where it is not there, as on a fresh CI machine."""

import shutil

import pytest
from monai.bundle import ConfigWorkflow

from conftest import CONFIGS


def test_monai_label_server_answers_with_the_probabilities_of_inference_json(tmp_path):
    from custom.deploy.export import build_bundle
    from custom.tools.monailabel import DEFAULT_VENV, check, venv_ready

    if not venv_ready(DEFAULT_VENV):
        pytest.skip(f"no MONAI Label environment at {DEFAULT_VENV} (build it with "
                    "`python -m custom.tools.monailabel --install true`, or set NVUM_MONAILABEL_VENV)")
    tiny = {"datalist#root": str(tmp_path / "data"), "datalist#num_training": 64, "datalist#num_validation": 32,
            "datalist#num_test": 32, "datalist#num_test_shifted": 32, "max_epochs": 1, "batch_size": 32}
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train",
                        bundle_root=str(tmp_path / "run"), mlflow=False, test_and_deploy=False, **tiny)
    wf.initialize()
    wf.run()
    wf.finalize()
    built = build_bundle(tmp_path / "run" / "models" / "model.pt", tmp_path / "out", tmp_path / "staging")
    studies = tmp_path / "studies"
    studies.mkdir()
    for png in sorted((tmp_path / "data" / "test").glob("*.png"))[:5]:
        shutil.copy(png, studies / png.name)
    result = check(str(built.zip), images=str(studies), work=str(tmp_path / "work"))
    assert result["images"] == 5 and result["max_difference"] < 1e-5
    assert result["labels"][0] == "atelectasis" and len(result["labels"]) == 14  # names of the metadata, lower-cased
