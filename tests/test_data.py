"""Data lists: what is handed to the datasets, and the errors that name what is wrong."""

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from custom.data import DataList, DataListError
from custom.evaluation.metrics import MultiLabelAUC, mean_auc, per_class_auc
from custom.data.transforms import ChestXrayToTensor

CLASSES = ["A", "B", "No Finding"]


def _write(tmp_path, splits, name="list.json", images=True):
    doc = {"classes": CLASSES, **splits}
    if images:
        for items in splits.values():
            for item in items:
                if isinstance(item, dict) and "image" in item:
                    (tmp_path / item["image"]).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / item["image"])
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            json.dump(doc, f)
    else:
        path.write_text(json.dumps(doc))
    return path


def _item(i, label=(1, 0, 0), patient=None):
    return {"image": f"img/{i}.png", "label": list(label), "patient": patient or f"p{i}"}


def test_items_carry_absolute_paths_float_labels_and_their_index(tmp_path):
    path = _write(tmp_path, {"training": [_item(0), _item(1, (0, 0, 1))], "validation": [_item(2)]}, name="l.json.gz")
    dl = DataList(path)
    items = dl.items("training")
    assert [d["index"] for d in items] == [0, 1]
    assert items[1]["image"] == str(tmp_path / "img/1.png")
    assert items[1]["label"].dtype == np.float32 and items[1]["label"].tolist() == [0, 0, 1]
    assert len(dl) == 2 and dl.labels("training").tolist() == [[1, 0, 0], [0, 0, 1]]
    assert dl.test_splits == []


@pytest.mark.parametrize(
    "splits, message",
    [
        ({"training": [_item(0, (1, 0))], "validation": [_item(1)]},
         "row 0 (img/0.png): 'label' has length 2, expected 3"),
        ({"training": [_item(0, (1, 2, 0))], "validation": [_item(1)]}, "'label' must hold only 0/1 values"),
        ({"training": [dict(_item(0), view="PA")], "validation": [_item(1)]}, "unknown key(s) ['view']"),
        ({"training": [_item(0), _item(1, patient="p0")], "validation": [_item(2, patient="p0")]},
         "patient(s) appear in more than one split: p0 in ['training', 'validation']"),
        ({"training": [_item(0), _item(0)], "validation": [_item(1)]}, "image img/0.png is listed twice"),
        ({"training": [], "validation": [_item(1)]}, "no items in required split 'training'"),
    ],
)
def test_bad_data_lists_stop_with_a_message_naming_the_problem(tmp_path, splits, message):
    with pytest.raises(DataListError) as err:
        DataList(_write(tmp_path, splits))
    assert message in str(err.value) and str(tmp_path / "list.json") in str(err.value)


def test_missing_images_are_counted_and_named(tmp_path):
    path = _write(tmp_path, {"training": [_item(0)], "validation": [_item(1)]})
    (tmp_path / "img/1.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        DataList(path)
    assert "1 image(s) of data list" in str(err.value) and str(tmp_path / "img/1.png") in str(err.value)
    (tmp_path / "img/0.png").unlink()
    with pytest.raises(FileNotFoundError, match="none of the 2 images is in dataset_dir .*: is it the right folder"):
        DataList(path)


def test_missing_data_list_and_dataset_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data list not found: .*nope.json"):
        DataList(tmp_path / "nope.json")
    path = _write(tmp_path, {"training": [_item(0)], "validation": [_item(1)]}, images=False)
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*elsewhere"):
        DataList(path, dataset_dir=tmp_path / "elsewhere")


def test_corrupt_data_list_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataListError, match="broken.json is not valid JSON"):
        DataList(path)


def test_per_class_auc_matches_sklearn_and_skips_single_valued_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = (rng.random((50, 3)) < 0.4).astype(int)
    labels[:, 1] = 0  # no positive: AUC undefined
    scores = rng.normal(size=(50, 3)) + labels
    aucs = per_class_auc(scores, labels)
    assert np.isclose(aucs[0], roc_auc_score(labels[:, 0], scores[:, 0]))
    assert np.isnan(aucs[1])
    assert mean_auc(aucs, [0, 1]) == pytest.approx(aucs[0])
    with pytest.warns(UserWarning, match="0.5"):
        assert mean_auc(aucs, [1]) == 0.5


def test_auc_metric_excludes_no_finding_and_publishes_per_class_values():
    from ignite.engine import Engine

    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]).float()
    scores = torch.tensor([[2.0, -1, 0], [-1, 2, 0], [0, 0, 9], [1, 0.5, -9]])  # No Finding scored badly
    engine = Engine(lambda e, b: {"pred": b[0], "label": b[1]})
    MultiLabelAUC(CLASSES).attach(engine, "auc")
    engine.run([(scores, labels)], max_epochs=1)
    m = engine.state.metrics
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score_(labels[:, c], scores[:, c]) for c in (0, 1)]))
    assert set(m) >= {"auc/A", "auc/B", "auc/No Finding"}


def roc_auc_score_(y, s):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y.numpy(), s.numpy())


@pytest.mark.parametrize("mode, dtype, peak", [("L", np.uint8, 255), ("I;16", np.uint16, 65535), ("RGB", np.uint8, 255),
                                              ("RGBA", np.uint8, 255)])
def test_every_image_kind_becomes_the_same_normalised_three_channel_tensor(tmp_path, mode, dtype, peak):
    from monai.transforms import LoadImage

    grey = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    pixels = (grey * peak).astype(dtype)
    if mode in ("RGB", "RGBA"):
        pixels = np.stack([pixels] * len(mode), axis=-1)
        if mode == "RGBA":
            pixels[..., 3] = 255
    Image.fromarray(pixels).save(tmp_path / "x.png")
    img = LoadImage(reader="PILReader", reverse_indexing=False, image_only=True, ensure_channel_first=True,
                    dtype=None)(tmp_path / "x.png")
    out = ChestXrayToTensor(16)(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = (torch.as_tensor(grey, dtype=torch.float32) - 0.485) / 0.229
    assert torch.allclose(out[0], expected, atol=2e-2)
    assert torch.allclose(out[0] * 0.229 + 0.485, out[2] * 0.225 + 0.406, atol=1e-5)  # same grey in every channel


def test_every_problem_of_a_data_list_is_named_in_one_message(tmp_path):
    splits = {"training": [_item(0, (1, 0)), _item(1), dict(_item(2), view="PA")],
              "validation": [_item(3), {"image": "img/1.png", "label": [0, 0, 1]}]}
    with pytest.raises(DataListError) as err:
        DataList(_write(tmp_path, splits))
    lines = str(err.value).splitlines()
    assert lines[0] == (f"data list {tmp_path / 'list.json'}: split 'training', row 0 (img/0.png): 'label' has length "
                        "2, expected 3 (one per class) (and 2 more problem(s), listed below)")
    assert lines[1].strip().startswith("split 'training', row 2: unknown key(s) ['view']")
    assert lines[2].strip().startswith("split 'validation', row 1: image img/1.png is also in split 'training', row 1")


@pytest.mark.parametrize("image", ["img/./0.png", "img/sub/../0.png"])
def test_the_same_image_spelt_another_way_is_still_the_same_image(tmp_path, image):
    path = _write(tmp_path, {"training": [_item(0), _item(1)], "validation": [dict(_item(2), image=image)]})
    with pytest.raises(DataListError,
                       match=rf"split 'validation', row 0: image {image} is also in split 'training', row 0"):
        DataList(path)


def test_absolute_image_paths_only_with_the_option_and_never_a_way_out_of_dataset_dir(tmp_path):
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    data = tmp_path / "data"
    data.mkdir()
    path = _write(data, {"training": [_item(0), dict(_item(1), image=str(outside))], "validation": [_item(2)]})
    with pytest.raises(DataListError, match=rf"row 1: image path {outside} is absolute.*'allow_absolute_paths': true"):
        DataList(path)
    dl = DataList(path, allow_absolute_paths=True)
    assert dl.items("training")[1]["image"] == str(outside)
    doc = json.loads(path.read_text())
    doc["training"][1]["image"] = "../elsewhere/x.png"  # the same file, reached with ..
    path.write_text(json.dumps(doc))
    for allow in (False, True):
        with pytest.raises(DataListError, match=r"row 1: image path \.\./elsewhere/x\.png leaves dataset_dir"):
            DataList(path, allow_absolute_paths=allow)


def test_missing_images_are_all_named_with_split_and_row(tmp_path):
    path = _write(tmp_path, {"training": [_item(0), _item(1), _item(2)], "validation": [_item(3)]})
    for i in (1, 3):
        (tmp_path / f"img/{i}.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        DataList(path)
    lines = [line.strip() for line in str(err.value).splitlines()]
    assert lines[0] == (f"2 image(s) of data list {path} are not found; the first: {tmp_path / 'img/1.png'} "
                        "(split 'training', row 1): file not found")
    assert lines[1:] == [f"{tmp_path / 'img/1.png'} (split 'training', row 1): file not found",
                         f"{tmp_path / 'img/3.png'} (split 'validation', row 0): file not found"]
