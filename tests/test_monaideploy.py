"""The bundle's MONAI Deploy application (``scripts/deploy_app.py``) run by the real App SDK on PNG and
DICOM files, against ``inference.json``.

Needs the SDK's own environment (``python -m custom.tools.monaideploy --install true`` builds it in
``~/venv-monaideploy``, or ``$NVUM_MONAIDEPLOY_VENV``); skipped where it is not there, as on a fresh CI machine."""

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from conftest import CONFIGS
from test_dicom import variants, write_dicom


def test_monai_deploy_application_gives_the_probabilities_of_inference_json_for_png_and_dicom(tmp_path):
    from custom.deploy.export import build_bundle
    from custom.tools.monaideploy import DEFAULT_VENV, check, venv_ready

    if not venv_ready(DEFAULT_VENV):
        pytest.skip(f"no MONAI Deploy App SDK environment at {DEFAULT_VENV} (build it with "
                    "`python -m custom.tools.monaideploy --install true`, or set NVUM_MONAIDEPLOY_VENV)")
    tiny = {"datalist#root": str(tmp_path / "data"), "datalist#num_training": 64, "datalist#num_validation": 32,
            "datalist#num_test": 32, "datalist#num_test_shifted": 32, "max_epochs": 1, "batch_size": 32}
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train",
                        bundle_root=str(tmp_path / "run"), mlflow=False, test_and_deploy=False, **tiny)
    wf.initialize()
    wf.run()
    wf.finalize()
    built = build_bundle(tmp_path / "run" / "models" / "model.pt", tmp_path / "out", tmp_path / "staging")
    png, dcm = tmp_path / "png", tmp_path / "dcm"
    png.mkdir()
    dcm.mkdir()
    for path in sorted((tmp_path / "data" / "test").glob("*.png"))[:3]:
        pixels = np.asarray(Image.open(path))
        (png / path.name).write_bytes(path.read_bytes())
        for name in ("m1_voilut", "m2_window", "m2_rle"):
            write_dicom(dcm / f"{path.stem}_{name}.dcm", **variants(pixels)[name])
    result = check(str(built.zip), images=[str(png), str(dcm)], work=str(tmp_path / "work"))
    assert [r["images"] for r in result["folders"].values()] == [3, 9]
    assert all(r["max_difference"] < 1e-5 for r in result["folders"].values())
