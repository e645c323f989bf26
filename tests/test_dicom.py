"""DICOM in: the same pixels as DICOM (both photometric interpretations; plain, VOI LUT, window with
rescale; RLE and deflated) and as PNG give the same probabilities (within 1e-5) through inference.json,
a data list, the MLflow model and the MONAI Deploy loader; undecodable transfer syntaxes are refused
with a message that names the file and the syntax."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import DenseNet121
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from conftest import CONFIGS, ROOT

TOL = 1e-5
CLASSES = json.loads((CONFIGS / "common.json").read_text())["classes"]


def write_dicom(
    path,
    stored,
    photometric="MONOCHROME2",
    bits_stored=8,
    syntax=ExplicitVRLittleEndian,
    rescale=None,
    window=None,
    voi_lut=None,
):
    """A one-frame DX DICOM file of ``stored`` pixel values (uint8 when ``bits_stored`` is 8, else uint16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
        DigitalXRayImageStorageForPresentation,
        generate_uid(),
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    ds.BitsAllocated = 8 if bits_stored == 8 else 16
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelData = stored.astype(np.uint8 if bits_stored == 8 else np.uint16).tobytes()
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new("LUTData", "US", [int(v) for v in voi_lut])
        ds.VOILUTSequence = Sequence([item])
    if syntax == RLELossless:
        ds.compress(RLELossless)
    elif syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def variants(p: np.ndarray) -> dict:
    """``{name: write_dicom kwargs}``: the PNG pixels ``p`` (uint8) stored in ways whose display is ``p / 255``."""
    out = {}
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        q = p.astype(np.int64) if photometric == "MONOCHROME2" else 255 - p.astype(np.int64)  # MONOCHROME1: inverted
        tag = photometric[-1]
        out[f"m{tag}_plain"] = dict(stored=q, photometric=photometric)
        # 12 bits stored, a VOI LUT maps each stored value 16 q to 257 q of a 16-bit output: (257 q) / 65535 = q / 255
        out[f"m{tag}_voilut"] = dict(
            stored=16 * q, photometric=photometric, bits_stored=12, voi_lut=(np.arange(4096) // 16).clip(0, 255) * 257
        )
        # 12 bits stored s = 8 q + 60, rescaled to 2 s - 100 = 16 q + 20; a linear window of width 4081 centred at
        # 2060.5 maps 16 q + 20 onto q / 255 of the rescaled range [-100, 8090]
        out[f"m{tag}_window"] = dict(
            stored=8 * q + 60, photometric=photometric, bits_stored=12, rescale=(2, -100), window=(2060.5, 4081)
        )
    out["m2_rle"] = dict(stored=p.astype(np.int64), syntax=RLELossless)
    out["m2_deflated"] = dict(stored=p.astype(np.int64), syntax=DeflatedExplicitVRLittleEndian)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three grey PNGs (two sizes) and every DICOM variant of each; a random DenseNet121 as models/model.pt and .ts."""
    root = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(0)
    (root / "png").mkdir()
    (root / "dcm").mkdir()
    pixels = {}
    for i, shape in enumerate([(40, 36), (40, 36), (33, 33)]):
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        p = np.clip(128 + 90 * np.sin(xx / (3 + i)) * np.cos(yy / 5) + rng.normal(0, 20, shape), 0, 255).astype(
            np.uint8
        )
        p[0, 0], p[-1, -1] = 0, 255  # the full 8-bit range
        Image.fromarray(p).save(root / "png" / f"img{i}.png")
        pixels[f"img{i}"] = p
        for name, kwargs in variants(p).items():
            write_dicom(root / "dcm" / f"img{i}_{name}.dcm", **kwargs)
    shutil.copy(root / "dcm" / "img0_m2_plain.dcm", root / "dcm" / "img0_nosuffix")  # hospital exports often have none
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=len(CLASSES))
    torch.manual_seed(0)
    for m in net.modules():  # larger weights than the default init: probabilities spread away from 0.5
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    (root / "bundle" / "models").mkdir(parents=True)
    torch.save(net.state_dict(), root / "bundle" / "models" / "model.pt")
    torch.jit.script(net.eval()).save(str(root / "model.ts"))
    return {"root": root, "pixels": pixels}


def _infer(images, input_path, out) -> pd.DataFrame:
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="infer",
        input_path=str(input_path),
        bundle_root=str(images["root"] / "bundle"),
        output_file=str(out),
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    table = pd.read_csv(out)
    table.index = [Path(p).name for p in table.pop("image")]
    return table


def test_the_reader_gives_the_display_values_of_every_variant(images):
    from custom.data.dicom import read_dicom

    for path in sorted((images["root"] / "dcm").iterdir()):
        array, meta = read_dicom(path)
        expected = images["pixels"][path.name.split("_")[0]] / 255.0
        assert array.shape == (1, *expected.shape) and array.dtype == np.float32
        assert np.abs(array[0] - expected).max() < 1e-6, path.name
    stored = pydicom.dcmread(images["root"] / "dcm" / "img0_m1_window.dcm").pixel_array
    assert stored.max() > 255  # the stored values are not the PNG's: the LUTs did the work


def test_dicom_files_give_the_probabilities_of_the_same_pixels_as_png(images, tmp_path):
    png = _infer(images, images["root"] / "png", tmp_path / "png.csv")
    dcm = _infer(images, images["root"] / "dcm", tmp_path / "dcm.csv")
    assert len(dcm) == 3 * len(variants(images["pixels"]["img0"])) + 1  # the file without a suffix is found too
    for name, row in dcm.iterrows():
        reference = png.loc[f"{name.split('_')[0].split('.')[0]}.png"].to_numpy()
        assert np.abs(row.to_numpy() - reference).max() < TOL, name
    assert png.to_numpy().std() > 0.01  # the network's outputs differ between images: the comparison means something
    # a data list of DICOM files (evaluation, inference on a split) reads them the same way
    datalist = {"classes": CLASSES, "test": [{"image": f"img{i}_m1_voilut.dcm", "label": [0] * 14} for i in range(3)]}
    (images["root"] / "dcm" / "list.json").write_text(json.dumps(datalist))
    listed = _infer(images, images["root"] / "dcm" / "list.json", tmp_path / "list.csv")
    assert np.abs(listed.to_numpy() - png.loc[[f"img{i}.png" for i in range(3)]].to_numpy()).max() < TOL
    from custom.data.datalist import DataList

    DataList(images["root"] / "dcm" / "list.json", required_splits=("test",), verify_images=True)  # decoded, accepted


def test_the_mlflow_model_and_the_deploy_loader_read_dicom_bytes_as_png(images):
    from custom.serving.pyfunc import ChestXrayClassifier

    class Context:
        artifacts = {"model": str(images["root"] / "model.ts"), "inference_config": str(CONFIGS / "inference.json")}

    model = ChestXrayClassifier()
    model.load_context(Context())
    png = model.predict(None, pd.DataFrame({"image": [(images["root"] / "png" / "img1.png").read_bytes()]}))
    dicoms = sorted((images["root"] / "dcm").glob("img1_*.dcm"))
    pred = model.predict(None, pd.DataFrame({"image": [p.read_bytes() for p in dicoms]}))
    assert np.abs(pred.to_numpy() - png.to_numpy()).max() < TOL
    spec = importlib.util.spec_from_file_location("nvum_deploy_io", ROOT / "bundle" / "scripts" / "deploy_io.py")
    io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    loader = parser.get_parsed_content("load_image")
    assert len(io.list_images(images["root"] / "dcm")) == 3 * 8 + 1
    for path in dicoms:
        array, meta = io.load_image(path)
        assert np.array_equal(array, np.asarray(loader({"image": str(path)})["image"])), path.name
        assert Path(meta["filename_or_obj"]) == path


def test_a_transfer_syntax_that_cannot_be_decoded_is_refused_naming_file_and_syntax(images, tmp_path):
    from custom.data.dicom import DicomReadError, read_dicom
    from custom.serving.pyfunc import decode_image

    path = write_dicom(tmp_path / "lossless.dcm", images["pixels"]["img0"].astype(np.int64))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1  # JPEG Lossless needs gdcm or pylibjpeg-libjpeg
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not decodable here \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(
        DicomReadError,
        match=r"lossless.dcm: transfer syntax JPEG Lossless.*1\.2\.840\.10008\.1\.2\.4\.70.*"
        r"cannot be decoded here \(needs one of: .*pylibjpeg",
    ):
        read_dicom(path)
    with pytest.raises(ValueError, match="row 0: transfer syntax JPEG Lossless"):
        decode_image(path.read_bytes(), "row 0")
    shutil.copy(images["root"] / "png" / "img0.png", tmp_path / "img0.png")  # inference goes on, naming the file
    table = _infer(images, tmp_path, tmp_path / "out" / "probabilities.csv")
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert list(table.index) == ["img0.png"] and [Path(p).name for p in errors["image"]] == ["lossless.dcm"]
    assert errors["reason"][0].startswith("transfer syntax JPEG Lossless")
    with pytest.raises(DicomReadError, match="row 3: the DICOM file holds no image: it has no pixel data element"):
        read_dicom(b"\0" * 128 + b"DICM" + b"\x02\x00", "row 3")
    plain = write_dicom(tmp_path / "plain.dcm", images["pixels"]["img0"].astype(np.int64))
    (tmp_path / "cut.dcm").write_bytes(plain.read_bytes()[:-500])  # pixel data cut short
    with pytest.raises(DicomReadError, match="cut.dcm: cannot decode the pixel data"):
        read_dicom(tmp_path / "cut.dcm")
