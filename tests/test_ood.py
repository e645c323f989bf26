"""The out-of-distribution gate (custom.evaluation.ood): the distance, its fit, and the same verdict in inference
(errors.csv) and the served model (HTTP 400, or the flag columns), with a small untrained DenseNet121 on a tiny
synthetic set (its pooled features already tell the synthetic chest images from photos)."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import inference_preprocessing

from custom.evaluation.ood import (FeatureDistance, FeatureTap, OODGate, fit_gate, load_gate, logits_and_features,
                                   ood_path, predict_features)
from custom.evaluation.ood_distance import NUM_IMAGE_STATISTICS, image_statistics


def test_the_distance_is_the_larger_hand_computed_mahalanobis_distance_of_the_views_over_their_thresholds():
    from custom.evaluation.ood_distance import Mahalanobis

    network = Mahalanobis(mean=[1.0, 2.0], precision=[[2.0, 0.0], [0.0, 0.5]], threshold=2.0)
    image = Mahalanobis(mean=[0.0], precision=[[1.0]], scale=[4.0], threshold=0.5)  # z = x / 4
    gate = FeatureDistance([network, image], threshold=1.5)
    # network: (2-1)^2 * 2 + (4-2)^2 * 0.5 = 4 -> 2 / 2 = 1;  image: |8 / 4| = 2 -> 2 / 0.5 = 4  -> max 4
    # network: (1-1, 3-2): 0.5 -> sqrt(0.5) / 2;  image: 1 / 4 / 0.5 = 0.5  -> max 0.5
    features = [[2.0, 4.0, 8.0], [1.0, 3.0, 1.0], [1.0, 2.0, 0.0]]
    assert np.allclose(gate.view_distances(features), [[1.0, 4.0], [np.sqrt(0.5) / 2, 0.5], [0.0, 0.0]])
    assert np.allclose(gate.distance(features), [4.0, 0.5, 0.0])
    assert gate.reasons(features[:2]) == ["not like the training images: distance 4.00 > 1.50", ""]
    with pytest.raises(ValueError, match="fitted on 3 features, the network gives 2"):
        gate.distance([[1.0, 2.0]])


def test_the_fit_is_ledoit_wolf_per_view_and_the_threshold_accepts_the_share_of_validation(tmp_path):
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 6)) * [1, 2, 3, 4, 10, 0.1] + 5
    validation = rng.normal(size=(200, 6)) * [1, 2, 3, 4, 10, 0.1] + 5
    gate = fit_gate(train, validation, share=0.9, view_sizes=(4, 2))

    def by_hand(columns, scale):  # shrunk covariance of the scaled training columns: inverse, quadratic form
        cov, _ = ledoit_wolf(train[:, columns] / scale)
        x = validation[:, columns] / scale - (train[:, columns] / scale).mean(axis=0)
        d = np.sqrt(np.einsum("nd,de,ne->n", x, np.linalg.inv(cov), x))
        return d / np.sort(d)[181 - 1]  # over the view's own threshold: the ceil(201 * 0.9) = 181st smallest

    network = by_hand([0, 1, 2, 3], 1.0)  # the first view is not standardised
    image = by_hand([4, 5], train[:, 4:].std(axis=0) + 1e-6)  # the others are
    assert np.allclose(gate.view_distances(validation), np.stack([network, image], 1), rtol=1e-4)
    combined = np.maximum(network, image)
    assert np.allclose(gate.distance(validation), combined, rtol=1e-4)
    assert gate.threshold == pytest.approx(np.sort(combined)[181 - 1], rel=1e-5)
    assert (gate.distance(validation) <= gate.threshold).mean() == 181 / 200
    assert gate.num_fit == 50 and gate.num_threshold == 200
    saved = FeatureDistance.load(gate.save(ood_path(tmp_path / "model.pt")))
    assert ood_path(tmp_path / "model.pt") == tmp_path / "model.ood.npz"
    assert np.allclose(saved.distance(validation), combined, rtol=1e-4) and saved.threshold == gate.threshold
    assert load_gate(tmp_path / "model.pt").share == 0.9 and load_gate(tmp_path / "other.pt") is None
    np.savez(tmp_path / "old.ood.npz", mean=[0.0], precision=[[1.0]], threshold=1.0)  # the first gate files
    with pytest.raises(ValueError, match="old.ood.npz: not a gate file .*another version.*fit_ood"):
        load_gate(tmp_path / "old.pt")
    (tmp_path / "bad.ood.npz").write_bytes(b"not a gate")
    with pytest.raises(ValueError, match="bad.ood.npz: not a gate file"):
        load_gate(tmp_path / "bad.pt")


def test_the_image_statistics_are_the_hand_computed_layouts_edges_and_quantiles():
    from custom.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    grey = torch.zeros(64, 64)
    grey[:, 32:] = 1.0  # left half black, right half white: one vertical edge between columns 31 and 32
    x = ((grey - IMAGENET_MEAN[0]) / IMAGENET_STD[0]).expand(1, 3, 64, 64)
    s = image_statistics(x)[0]
    layout = torch.tensor([0.0] * 4 + [1.0] * 4).repeat(8)
    assert s.shape == (NUM_IMAGE_STATISTICS,) == (2 * 64 + 16 + 17,)
    assert torch.allclose(s[:64], layout, atol=1e-5)
    standardised = (layout - 0.5) / (layout.std() + 1e-3)
    assert torch.allclose(s[64:128], standardised, atol=1e-4)
    # at 32 x 32 the edge lies between columns 15 and 16: strength 1 in column 15 of each row, 0 elsewhere;
    # averaged over the 8 x 8 cells of the 4 x 4 layout: 8 / 64 in the cells of column 1, 0 in the others
    assert torch.allclose(s[128:144], torch.tensor([0.0, 1 / 8, 0.0, 0.0]).repeat(4), atol=1e-5)
    assert torch.allclose(s[144:], torch.tensor([0.0] * 8 + [0.5] + [1.0] * 8), atol=1e-5)
    # a 512-px image is averaged down to 64 px first: the same statistics
    big = torch.nn.functional.interpolate(x, size=512, mode="nearest")
    assert torch.allclose(image_statistics(big), image_statistics(x), atol=1e-5)


def test_the_threshold_is_the_split_conformal_quantile():
    from custom.evaluation.ood_distance import conformal_threshold

    d = np.random.default_rng(0).permutation(np.arange(1.0, 1001.0))  # 1 ... 1000
    assert conformal_threshold(d, 0.99) == 991.0  # ceil(1001 * 0.99) = 991st smallest: accepts 99.1%
    assert conformal_threshold(d[:120], 0.99) == d[:120].max()  # ceil(121 * 0.99) = 120: the largest
    assert conformal_threshold(d, 0.9) == 901.0 and conformal_threshold([5.0], 0.5) == 5.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic set, an untrained DenseNet121 (seeded) saved as model.pt with its gate, and photos."""
    from monai.networks.nets import DenseNet121

    from custom.data.datalist import DataList
    from custom.data.synthetic.dataset import generate_synthetic
    from custom.evaluation.ood_sets import photo_images

    root = tmp_path_factory.mktemp("ood")
    datalist = DataList(generate_synthetic(root / "data", num_training=48, num_validation=32, num_test=8,
                                           num_test_shifted=0, progress=False))
    torch.manual_seed(0)
    network = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14).eval()
    torch.save(network.state_dict(), root / "model.pt")
    transform = inference_preprocessing()
    features = {s: predict_features(network, datalist.items(s), transform)[1] for s in ("training", "validation")}
    gate = fit_gate(features["training"], features["validation"], view_sizes=(1024, NUM_IMAGE_STATISTICS))
    gate.save(ood_path(root / "model.pt"))
    chest = [Path(i["image"]) for i in datalist.items("test")]
    photos = photo_images(root / "photos")[::4]  # 8 of the 32
    return SimpleNamespace(root=root, network=network, gate=gate, images=chest + photos, chest=chest, photos=photos,
                           transform=transform)


def test_the_features_are_the_pooled_features_of_the_forward_pass_then_the_image_statistics(setup):
    x = torch.stack([setup.transform({"image": str(p)})["image"] for p in setup.images[:4]]).float()
    with torch.no_grad():
        pooled = setup.network.class_layers.flatten(setup.network.class_layers.pool(
            setup.network.class_layers.relu(setup.network.features(x))))
        direct = torch.cat([pooled, image_statistics(x)], dim=1)
        with FeatureTap(setup.network) as tap:
            logits = setup.network(x)
        assert torch.equal(tap.features, direct) and direct.shape == (4, 1024 + NUM_IMAGE_STATISTICS)
        z, f = logits_and_features(setup.network, x)
        assert torch.equal(z, logits) and torch.equal(f, direct)
        scripted = torch.jit.script(setup.network)
        zs, fs = logits_and_features(scripted, x)
    assert torch.allclose(zs, logits, atol=1e-5) and torch.allclose(fs, direct, atol=1e-5)


def _infer(setup, out, enabled=True, network=None):
    """inference.json's dataset, gate and writer around the saved network (or ``network``, e.g. the TorchScript
    model); ({image: reason}, scored images)."""
    from ignite.engine import Engine
    from monai.data import DataLoader, decollate_batch

    from custom.serving.inference import InferenceDataset, ProbabilityWriter

    network = network or setup.network

    def step(engine, batch):
        with torch.no_grad():
            pred = torch.sigmoid(network(batch["image"].float()))
        engine.state.batch = decollate_batch(batch)
        return [{"image": b["image"], "pred": p} for b, p in zip(engine.state.batch, pred)]

    engine = Engine(step)
    OODGate(network, setup.root / "model.pt", enabled=enabled).attach(engine)
    ProbabilityWriter(Path(out) / "probs.csv", [str(i) for i in range(14)], thresholds={}).attach(engine)
    items = [{"image": str(p)} for p in setup.images]
    engine.run(DataLoader(InferenceDataset(items, setup.transform), batch_size=5))
    errors = {}
    if (Path(out) / "errors.csv").is_file():
        with open(Path(out) / "errors.csv", newline="") as f:
            errors = {Path(row["image"]).name: row["reason"] for row in csv.DictReader(f)}
    scored = [Path(p).name for p in pd.read_csv(Path(out) / "probs.csv")["image"]]
    return errors, scored


def _served(setup):
    from custom.serving.pyfunc import ChestXrayClassifier
    from custom.serving.loaders import TorchScriptRunner
    from monai.transforms import Compose, LoadImaged

    model = ChestXrayClassifier()
    model.classes = [str(i) for i in range(14)]
    model.preprocess = Compose([t for t in setup.transform.transforms if not isinstance(t, LoadImaged)])
    model.postprocess = lambda d: {"pred": torch.sigmoid(d["pred"])}
    model.thresholds = None
    model.model = TorchScriptRunner(torch.jit.script(setup.network)).eval()
    model.ood = load_gate(setup.root / "model.pt")
    return model


def test_inference_and_the_served_model_refuse_the_same_images_naming_distance_and_threshold(setup, tmp_path):
    from mlflow.exceptions import MlflowException

    errors, scored = _infer(setup, tmp_path / "on")
    names = [p.name for p in setup.images]
    # every synthetic chest image is scored; every photo goes to errors.csv with the distance and the threshold
    assert sorted(scored) == sorted(p.name for p in setup.chest)
    assert sorted(errors) == sorted(p.name for p in setup.photos)
    threshold = f"{setup.gate.threshold:.2f}"
    assert all(r.startswith("not like the training images: distance ") and r.endswith(f" > {threshold}")
               for r in errors.values())
    model = _served(setup)
    request = pd.DataFrame({"image": [p.read_bytes() for p in setup.images]})
    with pytest.raises(MlflowException) as err:
        model.predict(None, request)
    assert err.value.get_http_status_code() == 400
    first = names.index(setup.photos[0].name)
    assert err.value.message.startswith(f"row {first}: not like the training images: distance ")
    flagged = model.predict(None, request, params={"ood": "flag"})
    verdict = dict(zip(names, flagged["in_distribution"]))
    assert {n for n, v in verdict.items() if not v} == set(errors)  # the same verdict as inference
    for name, reason in errors.items():  # the same distance, to the rounding of the reason
        assert reason.split("distance ")[1].split(" >")[0] == f"{flagged['ood_distance'][names.index(name)]:.2f}"
    assert flagged.loc[flagged["in_distribution"] == 0, "0"].isna().all()
    assert flagged.loc[flagged["in_distribution"] == 1, "0"].between(0, 1).all()
    accepted = model.predict(None, pd.DataFrame({"image": [p.read_bytes() for p in setup.chest]}))
    assert accepted.shape == (len(setup.chest), 14) and accepted.notna().all().all()


def test_the_switch_turns_the_gate_off_in_inference_and_the_served_model(setup, tmp_path, monkeypatch):
    errors, scored = _infer(setup, tmp_path / "off", enabled=False)
    assert not errors and sorted(scored) == sorted(p.name for p in setup.images)
    from custom.evaluation.ood import ood_gate_enabled

    monkeypatch.setenv("NVUM_OOD_GATE", "0")
    assert not ood_gate_enabled()
    monkeypatch.setenv("NVUM_OOD_GATE", "maybe")
    with pytest.raises(ValueError, match=r"\$NVUM_OOD_GATE must be 1"):
        ood_gate_enabled()


def test_the_ood_sets_are_real_images_of_the_installed_packages(tmp_path):
    from PIL import Image

    from custom.evaluation.ood_sets import ood_sets

    chest = tmp_path / "chest.png"
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8), (30, 1))).save(chest)
    sets = ood_sets(tmp_path / "sets", [chest])
    assert len(sets["photos"]) == 32 and len(sets["pydicom"]) >= 40
    assert np.asarray(Image.open(sets["quarter_crop"][0])).shape == (15, 20)
    assert np.array_equal(np.asarray(Image.open(sets["rotated_90"][0])), np.rot90(np.asarray(Image.open(chest))))
    assert np.array_equal(np.asarray(Image.open(sets["inverted"][0])), 255 - np.asarray(Image.open(chest)))


def test_the_bundle_carries_the_gate_to_the_served_model_monai_label_and_deploy(setup, tmp_path, monkeypatch):
    """An unzipped bundle (models/model.ts, models/model.ood.npz copied as the export copies it, inference.json):
    the served model loaded from its artifacts and the MONAI Label / Deploy helper refuse what inference refuses."""
    import json

    from mlflow.exceptions import MlflowException

    from conftest import CONFIGS

    from custom.deploy.export import copy_gate
    from custom.evaluation.ood import refused_files
    from custom.serving.pyfunc import ChestXrayClassifier

    common = json.loads((CONFIGS / "common.json").read_text())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({
        "imports": ["$import custom"], "image_size": 32, "classes": [str(i) for i in range(14)],
        "load_image": common["load_image"], "to_network_input": common["to_network_input"],
        "preprocessing": common["preprocessing"],
        "postprocessing": {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}}))
    (tmp_path / "models").mkdir()
    torch.jit.save(torch.jit.script(setup.network), str(tmp_path / "models" / "model.ts"))
    assert copy_gate(setup.root / "model.pt", tmp_path / "models") == tmp_path / "models" / "model.ood.npz"
    assert copy_gate(tmp_path / "none.pt", tmp_path / "models") is None
    errors, _ = _infer(setup, tmp_path / "inference")
    from custom.serving.loaders import TorchScriptRunner

    runner = TorchScriptRunner(torch.jit.load(str(tmp_path / "models" / "model.ts"))).eval()
    assert _infer(setup, tmp_path / "inference_ts", network=runner)[0] == errors  # inference on model.ts alone
    assert not runner.keep_features  # handed back as it was
    refused = dict(refused_files(setup.images, tmp_path))
    assert {p.name: r for p, r in refused.items()} == errors  # same images, same distances and threshold
    assert refused_files(setup.images, tmp_path, enabled=False) == []

    artifacts = {"model": str(tmp_path / "models" / "model.ts"),
                 "inference_config": str(tmp_path / "configs" / "inference.json"),
                 "ood": str(tmp_path / "models" / "model.ood.npz")}
    served = ChestXrayClassifier()
    served.load_context(SimpleNamespace(artifacts=artifacts))
    request = pd.DataFrame({"image": [p.read_bytes() for p in setup.images]})
    flagged = served.predict(None, request, params={"ood": "flag"})
    assert {setup.images[i].name for i in np.flatnonzero(flagged["in_distribution"].to_numpy() == 0)} == set(errors)
    with pytest.raises(MlflowException, match="not like the training images"):
        served.predict(None, request)
    monkeypatch.setenv("NVUM_OOD_GATE", "0")  # the switch: every image answered
    served.load_context(SimpleNamespace(artifacts=artifacts))
    assert served.predict(None, request).shape == (len(setup.images), 14)


def test_the_fit_adds_one_jittered_copy_of_the_training_images_and_sets_the_threshold_on_validation(setup):
    from custom.evaluation.ood import acquisition_jitter, fit_on_images

    x = torch.stack([setup.transform({"image": str(p)})["image"] for p in setup.chest[:4]]).float()
    a = acquisition_jitter(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, acquisition_jitter(x, torch.Generator().manual_seed(1))) and a.shape == x.shape
    assert 0.01 < (a - x).abs().mean() < 1.0  # another exposure of the same image, not another image
    fit, held = [{"image": str(p)} for p in setup.chest[:6]], [{"image": str(p)} for p in setup.chest[6:]]
    gate = fit_on_images(setup.network, fit, held, setup.transform, share=1.0)
    assert gate.num_fit == 12 and gate.num_threshold == len(held)
    assert gate.threshold == pytest.approx(gate.distance(predict_features(setup.network, held,
                                                                          setup.transform)[1]).max())


def test_the_figures_of_ood_md_are_those_of_the_committed_result_files():
    from conftest import ROOT

    from custom.evaluation.ood_sets import ood_markdown

    page = (ROOT / "bundle" / "docs" / "ood.md").read_text()
    for name in ("synthetic.csv", "real_nih.csv"):
        assert ood_markdown(pd.read_csv(ROOT / "bundle" / "docs" / "ood" / name)) in page, name
    timing = json.loads((ROOT / "bundle" / "docs" / "ood" / "benchmark_ood_gate.json").read_text())
    assert (f"**{timing['ratio']:.3f}x** ({timing['on']:.2f} s against {timing['off']:.2f} s for "
            f"{timing['num_images']}\nimages; target at most 1.1x)") in page
    assert timing["ratio"] <= 1.1
