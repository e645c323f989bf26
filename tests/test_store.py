"""The prepared store (custom.data.store, `python -m custom.cli prepare`): identity with the originals, refusals,
resume, unreadable images."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from custom.data import DataList
from custom.data.store import IMAGES_FILE, STATUS_FILE, StoreError, check_store
from custom.data.transforms import IMAGENET_STD
from custom.tools import prepare as prepare_module
from custom.tools.prepare import prepare
from custom.tools.training import train_parser
from test_dicom import CLASSES, write_dicom

SIZE = 32


def _pattern(shape, seed, top=255):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    p = 0.5 + 0.35 * np.sin(xx / (3 + seed)) * np.cos(yy / 5) + rng.normal(0, 0.08, shape)
    return (np.clip(p, 0, 1) * top).round()


@pytest.fixture
def image_set(tmp_path):
    """A data list of one image per format: PNG 8-bit grey and RGB, PNG 16-bit holding 12 bits, JPEG, DICOM
    MONOCHROME1 and a 12-bit DICOM with a VOI LUT; sizes above, below and at the training size."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(_pattern((90, 70), 0).astype(np.uint8)).save(root / "grey8.png")
    rgb = np.stack([_pattern((40, 40), 1)] * 3, axis=-1).astype(np.uint8)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 9, 0, 255)
    Image.fromarray(rgb).save(root / "rgb8.png")
    Image.fromarray(_pattern((64, 64), 2, top=4095).astype(np.uint16)).save(root / "deep16.png")
    Image.fromarray(_pattern((50, 60), 3).astype(np.uint8)).save(root / "photo.jpg", quality=90)
    p = _pattern((SIZE, SIZE), 4).astype(np.int64)
    write_dicom(root / "mono1.dcm", 255 - p, photometric="MONOCHROME1")
    write_dicom(root / "voilut.dcm", 16 * p, bits_stored=12, voi_lut=(np.arange(4096) // 16).clip(0, 255) * 257)
    names = ["grey8.png", "rgb8.png", "deep16.png", "photo.jpg", "mono1.dcm", "voilut.dcm"]
    rng = np.random.default_rng(0)
    label = lambda: rng.integers(0, 2, len(CLASSES)).tolist()  # noqa: E731
    content = {"classes": CLASSES,
               "training": [{"image": n, "label": label(), "patient": f"p{i}"} for i, n in enumerate(names[:4])],
               "validation": [{"image": n, "label": label(), "patient": f"v{i}"} for i, n in enumerate(names[4:])]}
    path = root / "list.json"
    path.write_text(json.dumps(content))
    return path


def _tensors(datalist_path, size=SIZE, dataset_dir=None):
    """{(split, row): the tensor training gets} through train.json's preprocessing at ``size``."""
    preprocessing = train_parser({"image_size": size}).get_parsed_content("preprocessing")
    dl = DataList(datalist_path, dataset_dir, image_size=size)
    return {(s, r): preprocessing(item)["image"].as_tensor() for s in dl.splits for r, item in enumerate(dl.items(s))}


def test_store_gives_the_tensor_of_the_original_within_half_a_grey_level_and_keeps_labels(image_set, tmp_path):
    listed = prepare(str(image_set), SIZE, str(tmp_path / "store"), workers=0, progress=False)
    original, stored = _tensors(image_set), _tensors(listed)
    assert original.keys() == stored.keys() and len(stored) == 6
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for key in original:
        # in grey levels (the network's input times the normalisation's std): rounding to 8 bits, at most 1/2 level
        gap = ((stored[key] - original[key]) * std).abs().max().item()
        assert gap <= 0.5 / 255 + 1e-6, (key, gap * 255)
    source, prepared = json.loads(image_set.read_text()), json.loads(listed.read_text())
    for split in ("training", "validation"):
        assert [(i["label"], i["patient"]) for i in prepared[split]] == [
            (i["label"], i["patient"]) for i in source[split]]
    assert prepared["store"]["image_size"] == SIZE and prepared["store"]["source"] == str(image_set.resolve())
    images = np.load(tmp_path / "store" / IMAGES_FILE, mmap_mode="r")
    assert images.dtype == np.uint8 and images.shape == (6, SIZE, SIZE)


def test_the_tensor_from_the_store_through_the_worker_processes_is_the_same(image_set, tmp_path, monkeypatch):
    in_process = prepare(str(image_set), SIZE, str(tmp_path / "a"), workers=0, progress=False)
    # a runtime-only `custom` put ahead on the path (as loading an MLflow model or a deployable bundle does): the
    # workers must still import the code this process runs
    shadow = tmp_path / "shadow" / "custom"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(shadow.parent))
    two = prepare(str(image_set), SIZE, str(tmp_path / "b"), workers=2, chunk=2, progress=False)
    a, b = (np.load(p.parent / IMAGES_FILE) for p in (in_process, two))
    assert np.array_equal(a, b)


def test_a_store_of_another_size_or_a_changed_source_list_is_refused_naming_both(image_set, tmp_path):
    listed = prepare(str(image_set), SIZE, str(tmp_path / "store"), workers=0, progress=False)
    with pytest.raises(StoreError, match=rf"holds {SIZE}-pixel images but image_size is 64.*--image_size 64"):
        DataList(listed, image_size=64)
    preprocessing = train_parser({"image_size": 64}).get_parsed_content("preprocessing")
    with pytest.raises(RuntimeError) as raised:  # train.json's data list does not pass image_size: the transform
        preprocessing(DataList(listed).items("training")[0])
    assert isinstance(raised.value.__cause__, StoreError)  # MONAI's "applying transform" wraps it
    assert f"prepared at {SIZE} pixels, but image_size is 64" in str(raised.value.__cause__)
    with pytest.raises(StoreError, match=rf"holds {SIZE}-pixel images, asked for 64"):
        prepare(str(image_set), 64, str(tmp_path / "store"), workers=0, progress=False)
    content = json.loads(image_set.read_text())
    content["training"][0]["label"][0] = 1 - content["training"][0]["label"][0]  # a label corrected
    image_set.write_text(json.dumps(content))
    with pytest.raises(StoreError, match=rf"prepared from {image_set.resolve()} with SHA-256 .* has changed"):
        DataList(listed)
    with pytest.raises(StoreError, match=rf"prepared from {image_set.resolve()} .*not from {image_set.resolve()}"):
        prepare(str(image_set), SIZE, str(tmp_path / "store"), workers=0, progress=False)


def test_an_interrupted_run_resumes_where_it_stopped_and_gives_the_same_store(image_set, tmp_path, monkeypatch):
    fresh = prepare(str(image_set), SIZE, str(tmp_path / "fresh"), workers=0, progress=False)
    encode, calls = prepare_module._encode, []

    def interrupted(path):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(path)
        return encode(path)

    monkeypatch.setattr(prepare_module, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(image_set), SIZE, str(tmp_path / "store"), workers=0, chunk=1, progress=False)
    status = np.load(tmp_path / "store" / STATUS_FILE)
    assert status.tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(StoreError, match="unfinished"):
        check_store(tmp_path / "store" / "datalist.json", json.loads((tmp_path / "store" / "store.json").read_text()))
    calls.clear()
    monkeypatch.setattr(prepare_module, "_encode", lambda path: calls.append(path) or encode(path))
    resumed = prepare(str(image_set), SIZE, str(tmp_path / "store"), workers=0, chunk=1, progress=False)
    assert [p.rsplit("/", 1)[-1] for p in calls] == ["photo.jpg", "mono1.dcm", "voilut.dcm"]
    assert np.array_equal(np.load(resumed.parent / IMAGES_FILE), np.load(fresh.parent / IMAGES_FILE))
    assert json.loads(resumed.read_text())["training"] == json.loads(fresh.read_text())["training"]


def test_unreadable_images_go_to_the_errors_file_and_out_of_the_list(image_set, tmp_path):
    (image_set.parent / "photo.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    (image_set.parent / "mono1.dcm").unlink()
    listed = prepare(str(image_set), SIZE, str(tmp_path / "store"), workers=0, progress=False)
    with open(listed.parent / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["split"], r["row"], r["image"]) for r in rows] == [("training", "3", "photo.jpg"),
                                                                  ("validation", "0", "mono1.dcm")]
    assert re.search("not found|No such file", rows[1]["reason"]) and rows[0]["reason"]
    dl = DataList(listed)
    assert [i["image"].rsplit("/", 1)[-1] for i in dl.items("training")] == [f"{IMAGES_FILE}#{r}" for r in (0, 1, 2)]
    assert [i["image"].rsplit("/", 1)[-1] for i in dl.items("validation")] == [f"{IMAGES_FILE}#5"]


def test_the_nih_training_chain_crops_one_channel_and_the_trainer_gets_the_tensor_of_cropping_the_network_input(
        image_set):
    """nih.json crops and flips the one-channel 8-bit grey image and its trainer's prepare_batch normalises the
    batch (a twelfth of the bytes the workers resample and collate); bilinear resampling and flips commute with
    the per-channel normalisation, so the network gets the tensor of cropping the three-channel input, within
    the crop's 8-bit rounding."""
    from monai.data import list_data_collate
    from monai.transforms import Compose, RandFlipd

    from custom.data import RandResizedCropd
    from custom.tools.training import CONFIG_DIR

    parser = train_parser({"image_size": SIZE}, [CONFIG_DIR / "train.json", CONFIG_DIR / "datasets" / "nih.json"])
    nih, prepare_batch = parser.get_parsed_content("train#preprocessing"), parser.get_parsed_content(
        "train#trainer#prepare_batch")
    three_channels = Compose([parser.get_parsed_content("load_image"), parser.get_parsed_content("to_network_input"),
                              RandResizedCropd("image", scale=parser["crop_scale"]),
                              RandFlipd("image", prob=0.5, spatial_axis=1)])
    nih.set_random_state(3), three_channels.set_random_state(3)
    items = DataList(image_set).items("training") * 3
    grey = list_data_collate([nih(dict(item)) for item in items])
    assert grey["image"].shape == (len(items), 1, SIZE, SIZE)
    image, label = prepare_batch(grey, torch.device("cpu"))
    expected = torch.stack([three_channels(dict(item))["image"].as_tensor() for item in items])
    assert image.shape == expected.shape == (len(items), 3, SIZE, SIZE)
    # the workers crop and flip 8-bit images: half a grey level from rounding the grey image to 8 bits, one
    # from the 8-bit resampling of the crop (torch's integer path), against cropping the float network input
    assert grey["image"].dtype == torch.uint8 and image.dtype == torch.float32
    one_level = 1 / 255 / min(IMAGENET_STD)
    assert torch.allclose(image, expected, atol=1.5 * one_level)
    assert (image - expected).abs().mean() < 0.5 * one_level
    assert torch.equal(label, torch.stack([torch.as_tensor(item["label"]) for item in items]))
