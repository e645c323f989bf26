"""The bundle's MONAI Deploy application (``scripts/deploy_app.py``): its SDK-free parts (the image
loader, the multi-label output handling), and the application run by the real App SDK on PNG and
DICOM files against ``inference.json``.

The real run needs the SDK's own environment (``python -m custom.cli monaideploy --install true``
builds it in ``~/venv-monaideploy``, or ``$NVUM_MONAIDEPLOY_VENV``); it is skipped where that is not
there, as on a fresh CI machine."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from conftest import CONFIGS, ROOT, train_tiny_bundle
from test_dicom import variants, write_dicom


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"nvum_bundle_{name}", ROOT / "bundle" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
def test_deploy_png_loader_reads_as_inference_json(tmp_path, mode):
    io = _load_script("deploy_io")
    rng = np.random.default_rng(0)
    if mode == "RGB":
        img = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (20, 24), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8))
    path = tmp_path / "x.png"
    img.save(path)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    loader = parser.get_parsed_content("preprocessing").transforms[0]
    expected = np.asarray(loader({"image": str(path)})["image"])
    array, meta = io.load_image(path)
    assert array.shape == expected.shape == ((3 if mode == "RGB" else 1), 20, 24)
    assert array.dtype == expected.dtype and np.array_equal(array, expected)
    assert Path(meta["filename_or_obj"]).name == "x.png"
    # the served model's decoder reads the same pixels from the bytes
    from custom.serving.pyfunc import decode_image

    assert np.array_equal(decode_image(path.read_bytes()), expected)


def test_deploy_output_handling_names_each_probability_and_rejects_bad_outputs(tmp_path):
    io = _load_script("deploy_io")
    channel_def = {"0": "Atelectasis", "1": "Effusion", "2": "No Finding"}
    out = io.format_probabilities(torch.tensor([[0.9, 0.2, 0.05]]), channel_def)  # batch axis of 1 accepted
    assert list(out) == ["Atelectasis", "Effusion", "No Finding"]
    assert np.allclose(list(out.values()), [0.9, 0.2, 0.05])
    with pytest.raises(ValueError, match="2 outputs but channel_def names 3"):
        io.format_probabilities(np.array([0.1, 0.2]), channel_def)
    with pytest.raises(ValueError, match="not probabilities"):
        io.format_probabilities(np.array([2.3, -1.0, 0.5]), channel_def)  # logits: no sigmoid applied
    path = io.write_results({"a.png": out}, tmp_path / "out")
    assert json.loads(path.read_text()) == {"a.png": out}
    with pytest.raises(ValueError, match="not a PNG, JPEG or DICOM file"):
        (tmp_path / "fake.png").write_bytes(b"GIF89a not a png")
        io.load_image(tmp_path / "fake.png")
    with pytest.raises(FileNotFoundError, match="no PNG, JPEG or DICOM file found"):
        io.list_images(tmp_path / "out")
    # the SDK-dependent application module is valid Python (importable without the SDK)
    compile((ROOT / "bundle" / "scripts" / "deploy_app.py").read_text(), "deploy_app.py", "exec")


def test_deploy_app_scores_a_jpeg_as_inference_does_and_names_every_file_it_leaves_out(tmp_path):
    from test_dicom_guard import LATERAL, _dicom

    io = _load_script("deploy_io")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "b.jpg", quality=90)
    _dicom(tmp_path / "series" / "c_frontal.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")
    _dicom(tmp_path / "series" / "d_lateral.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="LL")
    (tmp_path / "e_notes.txt").write_text("not an image")
    (tmp_path / "f_fake.png").write_bytes(b"<html>not a png</html>")
    (tmp_path / "series" / "DICOMDIR").write_bytes(b"an index, not an image")
    selected, refused = io.select_images(io.list_files(tmp_path))
    assert [p.name for p in selected] == ["a.png", "b.jpg", "c_frontal.dcm"]
    assert [(p.name, reason) for p, reason in refused] == [
        ("e_notes.txt", "not a PNG, JPEG or DICOM image (named .txt)"),
        ("f_fake.png", "not a PNG, JPEG or DICOM image (named .png)"), ("d_lateral.dcm", LATERAL)]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    loader = parser.get_parsed_content("preprocessing").transforms[0]
    array, meta = io.load_image(tmp_path / "b.jpg")  # the JPEG read as inference reads it
    assert array.shape == (3, 20, 24) and np.array_equal(array, np.asarray(loader({"image": str(tmp_path / "b.jpg")})
                                                                           ["image"]))


@pytest.mark.slow
def test_monai_deploy_application_gives_the_probabilities_of_inference_json_for_png_jpeg_and_dicom(tmp_path):
    from custom.tools.monaideploy import DEFAULT_VENV, check, venv_ready

    if not venv_ready(DEFAULT_VENV):
        pytest.skip(f"no MONAI Deploy App SDK environment at {DEFAULT_VENV} (build it with "
                    "`python -m custom.cli monaideploy --install true`, or set NVUM_MONAIDEPLOY_VENV)")
    built = train_tiny_bundle(tmp_path / "run", tmp_path / "staging")
    png, dcm, jpg = tmp_path / "png", tmp_path / "dcm", tmp_path / "jpg"
    for folder in (png, dcm, jpg):
        folder.mkdir()
    for path in sorted((tmp_path / "run" / "data" / "test").glob("*.png"))[:3]:
        pixels = np.asarray(Image.open(path))
        (png / path.name).write_bytes(path.read_bytes())
        Image.fromarray(pixels).save(jpg / f"{path.stem}.jpg", quality=95)
        for name in ("m1_voilut", "m2_window", "m2_rle"):
            write_dicom(dcm / f"{path.stem}_{name}.dcm", **variants(pixels)[name])
    from test_dicom_guard import _dicom

    _dicom(dcm / "lateral.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="LL")  # refused by both
    result = check(str(built.zip), images=[str(png), str(dcm), str(jpg)], work=str(tmp_path / "work"))
    # check raises unless the app scored exactly what inference.json scored and left out exactly what it refused
    folders = list(result["folders"].values())
    assert sum(r["images"] for r in folders) + sum(len(r["left_out"]) for r in folders) == 16
    assert folders[2]["images"] >= 2 and folders[1]["left_out"]["lateral.dcm"].startswith(
        "not a frontal chest radiograph")
    assert all(r["max_difference"] < 1e-5 for r in folders)
