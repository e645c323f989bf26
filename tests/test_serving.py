"""Deployment pieces that need no trained model: the served model's input handling (what is not an image is
refused as a bad request naming the row and the reason), the offline metadata checks, the registrar with
tracking off."""

import base64
import io
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import CONFIGS, ROOT

from custom.serving.pyfunc import ChestXrayClassifier, decode_image, encode_array

CLASSES = ["A", "B", "No Finding"]


def _png(value=40, size=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_decoder_rejects_what_is_not_an_image_naming_the_row():
    with pytest.raises(ValueError) as err:
        decode_image("/etc/passwd", "row 2")
    assert str(err.value) == ("row 2: expected the image's bytes (PNG, JPEG, DICOM or .npy), base64-encoded, e.g. "
                              "$(base64 -w0 image.png); got the text '/etc/passwd' (it looks like a file path: "
                              "the served model does not read files)")
    with pytest.raises(ValueError, match="row 0: not a readable PNG/JPEG image"):
        decode_image(b"/etc/passwd", "row 0")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        decode_image(encode_array(np.zeros((2, 5, 5))))
    with pytest.raises(ValueError, match=r"row 1: the pixel array holds 2 NaN or infinite value\(s\)"):
        decode_image(encode_array(np.array([[0.5, np.nan], [np.inf, 0.2]], np.float32)), "row 1")
    # what is an image: bytes, base64 text (wrapped over lines as `base64` writes it without -w0), finite arrays
    png = _png()
    text = base64.b64encode(png).decode()
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert np.array_equal(decode_image(wrapped), decode_image(png)) and decode_image(png).shape == (1, 16, 16)
    assert decode_image(encode_array(np.full((4, 4), 0.5, np.float32))).shape == (1, 4, 4)


@pytest.fixture
def model():
    """The pyfunc model with the bundle's preprocessing and a tiny network (what load_context builds, without files)."""
    from monai.transforms import Compose

    from custom.data.transforms import ChestXrayToTensord

    m = ChestXrayClassifier()
    m.classes = CLASSES
    m.preprocess = Compose([ChestXrayToTensord(keys="image", size=8)])
    m.postprocess = lambda d: {"pred": torch.sigmoid(d["pred"])}
    torch.manual_seed(0)
    m.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, len(CLASSES)))
    return m


def test_a_bad_row_makes_a_bad_request_that_names_every_bad_row(model):
    from mlflow.exceptions import MlflowException

    good = model.predict(None, pd.DataFrame({"image": [_png(), base64.b64encode(_png(200)).decode()]}))
    assert list(good.columns) == CLASSES and good.shape == (2, 3) and ((good > 0) & (good < 1)).all().all()
    nan = encode_array(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame({"image": [_png(), "/data/x.png", nan]}))
    assert err.value.get_http_status_code() == 400 and err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.message.startswith("row 1: expected the image's bytes (PNG, JPEG, DICOM or .npy), base64-encoded")
    assert "(and 1 more bad row(s): row 2: the pixel array holds 64 NaN or infinite value(s)" in err.value.message
    with pytest.raises(MlflowException, match="the input needs a column 'image'") as err:
        model.predict(None, pd.DataFrame({"path": ["x.png"]}))
    assert err.value.get_http_status_code() == 400


def test_metadata_and_network_checks_pass_offline_and_catch_a_bad_metadata(tmp_path, monkeypatch):
    from custom.deploy.export import verify_bundle

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    verify_bundle(CONFIGS)  # the schema copy in bundle/docs, no download
    broken = tmp_path / "configs"
    broken.mkdir()
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    del meta["copyright"]
    (broken / "metadata.json").write_text(json.dumps(meta))
    (broken / "inference.json").write_text((CONFIGS / "inference.json").read_text())
    with pytest.raises(ValueError, match="copyright"):
        verify_bundle(broken, schema=ROOT / "bundle" / "docs" / "meta_schema_20240725.json")
    (broken / "metadata.json").write_text((CONFIGS / "metadata.json").read_text().replace('"num_channels": 14',
                                                                                          '"num_channels": 13'))
    with pytest.raises(ValueError, match="output channel number"):
        verify_bundle(broken, schema=ROOT / "bundle" / "docs" / "meta_schema_20240725.json")


def test_metadata_packages_use_the_schemas_name_and_survive_monais_reader():
    """MONAI 1.6 renames a deprecated ``optional_packages_version`` to ``required_packages_version``
    on reading, which would replace the packages listed there; the metadata (source and deployable)
    lists every package once, under the schema's name, at the versions requirements.txt pins."""
    import warnings

    from monai.bundle import ConfigParser

    from custom.deploy.export import bundle_configs

    raw = json.loads((CONFIGS / "metadata.json").read_text())
    assert "optional_packages_version" not in raw
    packages = raw["required_packages_version"]
    parser = ConfigParser()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser.read_meta(str(CONFIGS / "metadata.json"))
    assert not [w for w in caught if "deprecated name" in str(w.message)]
    assert parser.get("_meta_")["required_packages_version"] == packages
    assert bundle_configs(CONFIGS)[1]["required_packages_version"] == packages
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split()
                if "==" in line and not line.startswith("#"))
    assert {"mlflow", "jsonschema", "pytorch-ignite", "pydicom"} <= set(packages)
    assert {name: pins.get(name) for name in packages} == packages


def test_zip_docs_carry_the_files_their_pages_link_and_a_broken_link_stops_the_build(tmp_path):
    """What build_bundle copies into the zip's docs/: every page and the files pages link (followed into
    noise_benchmark/results.md, which links its curves), not the unlinked run records; every relative link
    of a copied page resolves among the copied files."""
    import re
    import shutil

    from custom.deploy.layout import write_docs

    copied = write_docs(ROOT / "bundle", tmp_path / "bundle")
    docs = tmp_path / "bundle" / "docs"
    assert sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*") if p.is_file()) == copied
    assert {"README.md", "results.md", "audit.md", "figures/audit_scores.png", "noise_benchmark/results.md",
            "noise_benchmark/curve_report_cpu.png", "noise_benchmark/curve_none_cpu.png"} <= set(copied)
    assert not any(name.startswith("noise_benchmark/runs/") for name in copied)
    for page in docs.rglob("*.md"):
        text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL))
        for link in re.findall(r"\]\(([^)\s]+)[^)]*\)", text):
            if not re.match(r"[a-z]+:|#", link):
                assert (page.parent / link.split("#")[0]).is_file(), f"{page}: {link}"

    source = tmp_path / "source"
    shutil.copytree(ROOT / "bundle" / "docs", source / "docs")
    (source / "docs" / "noise_benchmark" / "curve_none_cpu.png").unlink()  # linked by noise_benchmark/results.md
    with pytest.raises(FileNotFoundError, match=r"noise_benchmark/results\.md: link 'curve_none_cpu\.png'"):
        write_docs(source, tmp_path / "out")
    (source / "docs" / "extra.md").write_text("[outside](../../README.md)\n")
    curve = Path("noise_benchmark") / "curve_none_cpu.png"
    shutil.copy2(ROOT / "bundle" / "docs" / curve, source / "docs" / curve)
    with pytest.raises(FileNotFoundError, match="extra.md: link '../../README.md'.*outside the docs folder"):
        write_docs(source, tmp_path / "out")


def test_registrar_does_nothing_with_tracking_off(tmp_path):
    from custom.deploy.registry import ModelRegistrar
    from custom.training.tracking import MLflowTracker

    registrar = ModelRegistrar(MLflowTracker(enabled=False), tmp_path / "missing.pt", tmp_path / "models",
                               example_images=[])
    assert registrar.run() is None
    assert not (tmp_path / "models").exists() and not (Path.cwd() / "mlruns.db").exists()


def test_the_deployable_configs_take_the_model_contract_of_the_run():
    """A run on other classes and another size: the zip's train.json and inference.json say so (from the run
    record), where the repository's configs keep common.json's contract."""
    from custom.deploy.export import bundle_configs
    from custom.deploy.layout import deployable_train_config
    from custom.labels import CHEXPERT8_CLASSES

    record = {"classes": list(CHEXPERT8_CLASSES), "image_size": 224, "network": {"class": "DenseNet121"},
              "nvum": {"memory_momentum": 0.8}}
    common = json.loads((CONFIGS / "common.json").read_text())
    train = deployable_train_config(CONFIGS, record)
    assert train["classes"] == list(CHEXPERT8_CLASSES) and train["image_size"] == 224
    assert train["nvum"]["memory_momentum"] == 0.8
    assert train["network_def"] == common["network_def"]  # a stock network: common.json's definition
    inference, meta = bundle_configs(CONFIGS, record)
    assert inference["classes"] == list(CHEXPERT8_CLASSES) and inference["image_size"] == 224
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    assert pred["channel_def"] == {str(i): c for i, c in enumerate(CHEXPERT8_CLASSES)}
    assert deployable_train_config(CONFIGS, {})["classes"] == common["classes"]


def test_a_recorded_network_config_is_what_export_inference_and_the_audit_rebuild():
    """The run record keeps the network_def config as it is (stock or custom target); rebuild_network builds it
    with the record's number of classes; a record naming only a class is served by a network_def of that class."""
    import functools

    from monai.networks.nets import DenseNet121, ResNet

    from custom.deploy.export import bundle_configs
    from custom.deploy.layout import deployable_train_config
    from custom.networks import build_network, network_record, rebuild_network
    from custom.record import RunRecord

    stock = {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": "@num_classes"}
    record = RunRecord(["a", "b", "No Finding"], 4, network=stock).state_dict()
    assert record["network"] == stock
    net = rebuild_network(record["network"], 3)
    assert isinstance(net, DenseNet121) and net.features.conv0.in_channels == 1
    assert net.class_layers.out.out_features == 3
    # the config, not common.json's, goes into the deployable configs
    assert bundle_configs(CONFIGS, record)[0]["network_def"] == stock
    assert deployable_train_config(CONFIGS, record)["network_def"] == stock
    # a custom target, given as a callable component or built
    resnet = dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 8, 8], spatial_dims=2,
                  n_input_channels=3, conv1_t_stride=1, no_max_pool=True)
    built = network_record(build_network("ResNet", 5, **resnet))
    assert built == {"_target_": "custom.build_network", "name": "ResNet", "num_classes": "@num_classes", **resnet}
    assert isinstance(rebuild_network(built, 2), ResNet) and rebuild_network(built, 2).fc.out_features == 2
    partial = network_record(functools.partial(DenseNet121, spatial_dims=2, in_channels=3, out_channels=7))
    assert partial["_target_"].endswith("DenseNet121") and partial["out_channels"] == 7
    assert isinstance(rebuild_network(partial, 7), DenseNet121)
    # records of older runs: a build_network definition, or only a class
    old = {"name": "ResNet", **resnet}
    assert rebuild_network(old, 4).fc.out_features == 4
    assert deployable_train_config(CONFIGS, {"network": old})["network_def"]["_target_"] == "custom.build_network"
    given = DenseNet121(spatial_dims=2, in_channels=3, out_channels=3)
    assert rebuild_network({"class": "DenseNet121"}, 3, given) is given
    with pytest.raises(ValueError, match="records a 'ResNet' network without its config.*builds a DenseNet121"):
        rebuild_network({"class": "ResNet"}, 3, given, "model.json")
    with pytest.raises(ValueError, match="model.json: the recorded network .* cannot be built.*@channels"):
        rebuild_network({**stock, "in_channels": "@channels"}, 3, where="model.json")


def _npy_header_only(shape, dtype=np.uint8) -> bytes:
    """The header of a ``.npy`` file of ``shape`` with no pixel data after it (the function writes the magic too)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_a_npy_array_over_the_pixel_limit_is_refused_from_its_header_without_allocating():
    import time
    import tracemalloc

    from PIL import Image

    from custom.serving.pyfunc import MAX_PIXELS

    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89478485  # one limit, Pillow's
    header = _npy_header_only((20000, 20000))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as err:
            decode_image(base64.b64encode(header).decode(), "row 3")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == ("row 3: the .npy array has 400000000 pixels (20000 x 20000), over the limit of 89478485 "
                              "pixels per image (refused before decoding: a possible decompression bomb)")
    assert seconds < 1 and peak < 10 * 2**20  # numpy would have allocated 400 MB before finding the data missing
    with pytest.raises(ValueError, match=r"row 0: the \.npy array has 100000000 pixels \(10000 x 10000\)"):
        decode_image(_npy_header_only((3, 10000, 10000), np.float32), "row 0")  # channels do not count, as in Pillow
    # under the limit, a header without its data is refused as truncated, again before anything is allocated
    with pytest.raises(ValueError, match=r"row 0: unreadable \.npy data: truncated \(0 bytes of pixels, the header's "
                                         r"uint8 \(9000, 9000\) needs 81000000\)"):
        decode_image(_npy_header_only((9000, 9000)), "row 0")
    with pytest.raises(ValueError, match=r"\(C, H, W\) array .* got <U1 \(3, 3\)"):  # the type from the header too
        decode_image(encode_array(np.full((3, 3), "a")))
    assert decode_image(encode_array(np.ones((2, 3), np.uint16))).shape == (1, 2, 3)


def test_png_and_dicom_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    import pydicom
    from PIL import Image

    import custom.serving.decode as decode  # the decoder of the served model
    from test_dicom import write_dicom

    monkeypatch.setattr(decode, "MAX_PIXELS", 255)
    with pytest.raises(ValueError) as err:
        decode_image(_png(size=16), "row 1")  # 256 pixels
    assert str(err.value) == ("row 1: the image has 256 pixels (16 x 16), over the limit of 255 pixels per image "
                              "(refused before decoding: a possible decompression bomb)")
    assert decode_image(_png(size=15)).shape == (1, 15, 15)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice Pillow's limit Pillow refuses it while opening
    with pytest.raises(ValueError, match=r"row 1: the image has 256 pixels, over the limit of 255 pixels per image"):
        decode_image(_png(size=16), "row 1")
    monkeypatch.undo()

    write_dicom(tmp_path / "a.dcm", np.full((16, 16), 90))
    small = (tmp_path / "a.dcm").read_bytes()
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.Rows = ds.Columns = 20000  # the header of a 400-megapixel image, with 256 bytes of pixels
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ValueError) as err:
        decode_image(buf.getvalue(), "row 2")
    assert str(err.value) == ("row 2: the DICOM image has 400000000 pixels (20000 x 20000), over the limit of 89478485 "
                              "pixels per image (refused before decoding: a possible decompression bomb)")
    ds.Rows = ds.Columns = 16
    ds.NumberOfFrames = 400000  # frames count too
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ValueError, match=r"row 2: the DICOM image has 102400000 pixels \(16 x 16 x 400000 frames\)"):
        decode_image(buf.getvalue(), "row 2")
    monkeypatch.setattr(decode, "MAX_PIXELS", 255)
    with pytest.raises(ValueError, match="row 0: the DICOM image has 256 pixels"):
        decode_image(small, "row 0")
    monkeypatch.setattr(decode, "MAX_PIXELS", 256)
    assert np.allclose(decode_image(small), 90 / 255)


def test_an_image_over_the_limit_is_a_bad_row_of_a_bad_request(model):
    from mlflow.exceptions import MlflowException

    huge = base64.b64encode(_npy_header_only((20000, 20000))).decode()
    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame({"image": [_png(), huge, "/x.png"]}))
    assert err.value.get_http_status_code() == 400
    assert err.value.message.startswith("row 1: the .npy array has 400000000 pixels (20000 x 20000), over the limit")
    assert "(and 1 more bad row(s): row 2: expected the image's bytes" in err.value.message


def test_requests_over_the_row_or_byte_limit_are_refused_before_anything_is_decoded(model, monkeypatch):
    from mlflow.exceptions import MlflowException

    import custom.serving.pyfunc as pyfunc
    from custom.serving.pyfunc import MAX_REQUEST_BYTES, MAX_ROWS, request_limits

    monkeypatch.delenv("NVUM_MAX_ROWS", raising=False)
    monkeypatch.delenv("NVUM_MAX_REQUEST_BYTES", raising=False)
    assert (MAX_ROWS, MAX_REQUEST_BYTES) == (256, 256 * 2**20) == request_limits()
    png = _png()
    decoded = []
    real_decode = pyfunc.decode_image
    monkeypatch.setattr(pyfunc, "decode_image", lambda data, name: decoded.append(name) or real_decode(data, name))
    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame({"image": [png] * 257}))
    assert err.value.get_http_status_code() == 400 and err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.message == ("the request has 257 rows, over the limit of 256 rows per request ($NVUM_MAX_ROWS on "
                                 "the server sets it); send the images in several requests")
    monkeypatch.setenv("NVUM_MAX_ROWS", "3")
    with pytest.raises(MlflowException, match=r"4 rows, over the limit of 3 rows per request \(\$NVUM_MAX_ROWS"):
        model.predict(None, pd.DataFrame({"image": [png] * 4}))
    text = base64.b64encode(png).decode()
    monkeypatch.setenv("NVUM_MAX_REQUEST_BYTES", str(len(png) + len(text) - 1))
    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame({"image": [png, text]}))  # bytes and base64 text, each by its length
    assert err.value.get_http_status_code() == 400
    assert err.value.message == (f"the request's images take {len(png) + len(text)} bytes encoded, over the limit of "
                                 f"{len(png) + len(text) - 1} bytes per request ($NVUM_MAX_REQUEST_BYTES on the "
                                 "server sets it); send the images in several requests")
    assert decoded == []  # refused before anything was decoded
    monkeypatch.setenv("NVUM_MAX_REQUEST_BYTES", str(len(png) + len(text)))
    assert model.predict(None, pd.DataFrame({"image": [png, text]})).shape == (2, 3) and decoded == ["row 0", "row 1"]
    monkeypatch.setenv("NVUM_MAX_ROWS", "many")
    with pytest.raises(ValueError, match=r"\$NVUM_MAX_ROWS must be a positive whole number, got 'many'"):
        model.load_context(None)  # the server stops at start


def test_chunked_prediction_gives_the_probabilities_of_one_pass_and_names_bad_rows_of_every_chunk(model, monkeypatch):
    from mlflow.exceptions import MlflowException

    import custom.serving.pyfunc as pyfunc

    rows = [_png(value) for value in (0, 40, 90, 160, 250)]
    one_pass = model.predict(None, pd.DataFrame({"image": rows}))
    network, events = model.model, []
    model.model = lambda x: events.append(f"forward {len(x)}") or network(x)
    real_decode = pyfunc.decode_image
    monkeypatch.setattr(pyfunc, "decode_image", lambda data, name: events.append(name) or real_decode(data, name))
    model.chunk_rows = 2
    chunked = model.predict(None, pd.DataFrame({"image": rows}))
    # a chunk is decoded, then predicted, before the next one is decoded
    assert events == ["row 0", "row 1", "forward 2", "row 2", "row 3", "forward 2", "row 4", "forward 1"]
    assert np.abs(chunked.to_numpy() - one_pass.to_numpy()).max() < 1e-6 and one_pass.to_numpy().std() > 0
    events.clear()
    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame({"image": [rows[0], rows[1], rows[2], "/a.png", "/b.png"]}))
    assert err.value.message.startswith("row 3: expected") and "1 more bad row(s): row 4: expected" in err.value.message
    assert events == ["row 0", "row 1", "forward 2", "row 2", "row 3", "row 4"]  # after a bad row: only decoded


def _inference_reasons(paths, policy, image_size):
    """What inference's dataset says of each image file under ``policy`` (warning or refusal, "" for none)."""
    from monai.transforms import Compose

    from custom.data.keys import INPUT_WARNING, REFUSED
    from custom.data.transforms import ChestXrayToTensord, LoadImageChestXrayd
    from custom.serving.inference import InferenceDataset

    transform = Compose([LoadImageChestXrayd(keys="image", reader="PILReader", reverse_indexing=False,
                                             image_only=True, ensure_channel_first=True, dtype=None),
                         ChestXrayToTensord(keys="image", size=8)])
    dataset = InferenceDataset([{"image": str(p)} for p in paths], transform, image_size=image_size,
                               degenerate_images=policy)
    return [item[REFUSED] or item[INPUT_WARNING] for item in dataset]


def test_served_model_gives_a_degenerate_image_inferences_policy_and_words(model, tmp_path):
    from mlflow.exceptions import MlflowException

    rng = np.random.default_rng(0)
    images = {"tiny.png": np.zeros((1, 1), np.uint8), "normal.png": rng.integers(0, 255, (64, 64), dtype=np.uint8),
              "black.png": np.zeros((64, 64), np.uint8)}
    paths = []
    for name, array in images.items():
        Image.fromarray(array).save(tmp_path / name)
        paths.append(tmp_path / name)
    request = pd.DataFrame({"image": [p.read_bytes() for p in paths]})
    model.degenerate_images, model.image_size = "warn", 64  # what load_context reads from inference.json
    warned = _inference_reasons(paths, "warn", 64)
    assert warned[0].startswith("degenerate image, scored all the same: 1 x 1 pixels") and warned[1] == ""
    out = model.predict(None, request)  # scored, each degenerate row saying why in inference's words
    assert list(out.columns) == CLASSES + ["input_warning"] and out["input_warning"].tolist() == warned
    assert out[CLASSES].notna().all().all()
    assert list(model.predict(None, request.iloc[1:2]).columns) == CLASSES  # no degenerate row: no column
    refused = _inference_reasons(paths, "refuse", 64)
    for params in ({"degenerate_images": "refuse"}, None):
        if params is None:
            model.degenerate_images = "refuse"  # inference.json's setting, without the parameter
        with pytest.raises(MlflowException) as err:
            model.predict(None, request, params=params)
        assert err.value.get_http_status_code() == 400
        assert err.value.message == f"row 0: {refused[0]} (and 1 more bad row(s): row 2: {refused[2]})"
        assert refused[0].startswith("degenerate image, not scored (degenerate_images='refuse'): 1 x 1 pixels")
    with pytest.raises(MlflowException) as err:
        model.predict(None, request, params={"degenerate_images": "ignore"})
    assert err.value.get_http_status_code() == 400
    assert err.value.message == "the parameter degenerate_images must be one of ('warn', 'refuse'), got 'ignore'"


def test_a_request_over_the_pixel_budget_is_refused_from_the_headers_before_decoding(model, monkeypatch, tmp_path):
    from mlflow.exceptions import MlflowException

    import custom.serving.pyfunc as pyfunc
    from custom.serving.pyfunc import MAX_REQUEST_PIXELS, pixel_budget

    monkeypatch.delenv("NVUM_MAX_REQUEST_PIXELS", raising=False)
    assert pixel_budget() == MAX_REQUEST_PIXELS == 2**28
    decoded = []
    real_decode = pyfunc.decode_image
    monkeypatch.setattr(pyfunc, "decode_image", lambda data, name: decoded.append(name) or real_decode(data, name))
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG")  # 81 M pixels of black: a small file, much CPU
    black = buf.getvalue()
    assert len(black) < 200_000
    with pytest.raises(MlflowException) as err:  # 32 rows: 2.6 G pixels in a body of a few MB
        model.predict(None, pd.DataFrame({"image": [base64.b64encode(black).decode()] * 32}))
    assert err.value.get_http_status_code() == 400 and err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.message == ("the request's images have 2592000000 pixels in all, over the limit of 268435456 "
                                 "pixels per request (row 3 takes the total over it; $NVUM_MAX_REQUEST_PIXELS on the "
                                 "server sets it); send the images in several requests")
    assert decoded == []  # refused from the headers
    # every input type counts by its header: PNG 16 x 16, .npy 3 x 10 x 20 (channels do not count), DICOM 30 x 40
    from test_dicom import write_dicom

    write_dicom(tmp_path / "x.dcm", np.add.outer(np.arange(30), np.arange(40)))
    rows = [_png(), encode_array(np.ones((3, 10, 20), np.float32)), (tmp_path / "x.dcm").read_bytes()]
    monkeypatch.setenv("NVUM_MAX_REQUEST_PIXELS", str(256 + 200 + 1200 - 1))
    with pytest.raises(MlflowException, match=r"have 1656 pixels in all, over the limit of 1655 pixels per request "
                                              r"\(row 2 takes"):
        model.predict(None, pd.DataFrame({"image": rows}))
    assert decoded == []
    monkeypatch.setenv("NVUM_MAX_REQUEST_PIXELS", "1656")
    assert model.predict(None, pd.DataFrame({"image": rows[:2]})).shape == (2, 3) and decoded == ["row 0", "row 1"]
    monkeypatch.setenv("NVUM_MAX_REQUEST_PIXELS", "0")
    with pytest.raises(ValueError, match=r"\$NVUM_MAX_REQUEST_PIXELS must be a positive whole number, got '0'"):
        model.load_context(None)  # the server stops at start


def test_a_request_answered_or_refused_hands_its_memory_back_once_the_server_has_dropped_it(model, monkeypatch):
    import time

    from mlflow.exceptions import MlflowException

    import custom.serving.pyfunc as pyfunc

    calls = []
    monkeypatch.setattr(pyfunc, "release_memory", lambda: calls.append("trim"))
    monkeypatch.setattr(pyfunc.gc, "collect", lambda: calls.append("collect"))
    monkeypatch.setattr(pyfunc, "RELEASE_DELAY_S", 0.3)
    monkeypatch.setenv("NVUM_MAX_ROWS", "2")
    model.predict(None, pd.DataFrame({"image": [_png()]}))
    assert calls == ["trim"]  # inside the request; the collection waits until the server has dropped the request
    time.sleep(1)
    assert calls == ["trim", "collect", "trim"]
    calls.clear()
    for _ in range(3):  # refused before anything is decoded; three requests within the delay: one release
        with pytest.raises(MlflowException, match="over the limit of 2 rows"):
            model.predict(None, pd.DataFrame({"image": [_png()] * 3}))
    assert calls == []
    time.sleep(1)
    assert calls == ["collect", "trim"]


# ----------------------------------------------------------------------------------------------
# operating thresholds: decisions beside the probabilities
# ----------------------------------------------------------------------------------------------


def test_served_model_with_thresholds_adds_a_decision_per_class_after_the_probabilities(model):
    images = pd.DataFrame({"image": [_png(v) for v in (0, 60, 120, 200, 255)]})
    probs = model.predict(None, images)
    assert list(probs.columns) == CLASSES  # without thresholds: the probabilities only
    model.thresholds = [float(probs["A"].median()), 0.0, 1.0]
    out = model.predict(None, images)
    assert list(out.columns) == CLASSES + ["A_positive", "B_positive", "No Finding_positive"]
    assert np.allclose(out[CLASSES].to_numpy(), probs.to_numpy())
    assert out["A_positive"].tolist() == (probs["A"] >= probs["A"].median()).astype(int).tolist()
    assert out["A_positive"].sum() == 3  # the median of five distinct values and the two above it
    assert out["B_positive"].tolist() == [1] * 5 and out["No Finding_positive"].tolist() == [0] * 5


def _write_probabilities(tmp_path, probs, **kwargs):
    """Run a ProbabilityWriter over one batch of ``probs`` (rows of class probabilities), as the evaluator would."""
    from conftest import write_probabilities

    return write_probabilities(tmp_path / "probabilities.csv", CLASSES, probs, **kwargs)


def test_inference_writes_decisions_equal_to_probability_at_least_threshold(tmp_path):
    probs = [[0.30, 0.10, 0.90], [0.29, 0.50, 0.20], [0.80, 0.05, 0.50]]
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.json").write_text(json.dumps({"classes": CLASSES, "thresholds": {"A": 0.3, "B": 0.06,
                                                                                      "No Finding": 0.5}}))
    # from the run record beside the checkpoint (model.pt itself need not exist: only its record is read)
    _write_probabilities(tmp_path, probs, checkpoint=models / "model.pt")
    table = pd.read_csv(tmp_path / "probabilities.csv")
    assert list(table.columns) == ["image", *CLASSES]  # the probabilities file keeps its format
    decisions = pd.read_csv(tmp_path / "decisions.csv")
    assert list(decisions.columns) == ["image", *CLASSES] and list(decisions["image"]) == list(table["image"])
    # equality counts as positive: 0.30 >= 0.3 and 0.50 >= 0.5
    assert decisions[CLASSES].to_numpy().tolist() == [[1, 1, 1], [0, 1, 0], [1, 0, 1]]
    for c, t in zip(CLASSES, (0.3, 0.06, 0.5)):
        assert (decisions[c] == (table[c] >= t).astype(int)).all()
    # an override (inference.json's "thresholds") wins over the record; an empty one turns the decisions off
    _write_probabilities(tmp_path, probs, checkpoint=models / "model.pt", thresholds={"A": 0.9, "B": 0.9,
                                                                                      "No Finding": 0.9})
    assert pd.read_csv(tmp_path / "decisions.csv")[CLASSES].to_numpy().tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    _write_probabilities(tmp_path, probs, checkpoint=models / "model.pt", thresholds={})
    assert not (tmp_path / "decisions.csv").exists()  # the stale one is removed
    # no record, no thresholds: no decisions
    _write_probabilities(tmp_path, probs, checkpoint=tmp_path / "none" / "model.pt")
    assert not (tmp_path / "decisions.csv").exists()


def test_thresholds_that_miss_a_class_or_are_out_of_range_are_refused():
    from custom.serving.inference import read_thresholds

    assert read_thresholds(CLASSES, {"A": 0.1, "B": 1, "No Finding": 0.5, "extra": 0.2}) == [0.1, 1.0, 0.5]
    with pytest.raises(ValueError, match=r"no threshold for classes \['No Finding'\]"):
        read_thresholds(CLASSES, {"A": 0.1, "B": 0.2})
    with pytest.raises(ValueError, match=r"threshold of B must be a number in \[0, 1\], got 1.5"):
        read_thresholds(CLASSES, {"A": 0.1, "B": 1.5, "No Finding": 0.5})
    assert read_thresholds(CLASSES, None, None) is None


def test_the_bundle_takes_the_thresholds_of_the_record_beside_the_checkpoint(tmp_path):
    from types import SimpleNamespace

    from custom.deploy.export import bundle_configs
    from custom.deploy.registry import ModelRegistrar

    models = tmp_path / "models"
    models.mkdir()
    thresholds = {"A": 0.2, "B": 0.7, "No Finding": 0.5}
    run = {"classes": CLASSES, "num_training": 4, "image_size": 16}
    registrar = ModelRegistrar(None, models, record=dict(run))
    assert registrar.bundle_record() == registrar.record and "thresholds" not in registrar.record  # none anywhere
    registrar.test_report = SimpleNamespace(thresholds={"A": 0.1, "B": 0.1, "No Finding": 0.1}, threshold_notes={})
    assert registrar.bundle_record()["thresholds"] == {"A": 0.1, "B": 0.1, "No Finding": 0.1}  # the report's
    (models / "model.json").write_text(json.dumps({**run, "thresholds": thresholds, "threshold_rule": "r"}))
    record = registrar.bundle_record()  # the record beside model.pt wins (edited by hand, say)
    assert record["thresholds"] == thresholds and record["threshold_rule"] == "r" and record["classes"] == CLASSES
    inference, _ = bundle_configs(CONFIGS, record)
    assert inference["thresholds"] == thresholds and inference["classes"] == CLASSES
    inference, _ = bundle_configs(CONFIGS, run)
    assert inference["thresholds"] is None  # the repository's default: the record beside the checkpoint
