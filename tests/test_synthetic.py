"""Tests of the synthetic chest X-ray generator (custom/data/synthetic/) and its label statistics."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from custom.data import synthetic as S
from custom.labels import NIH14_CLASSES, NO_FINDING

SMALL = {"num_training": 48, "num_validation": 16, "num_test": 24, "num_test_shifted": 24,
         "progress": False}
NF = NIH14_CLASSES.index(NO_FINDING)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


# --------------------------------------------------------------------------------------
# parse_noise
# --------------------------------------------------------------------------------------


def test_parse_noise_forms():
    report = S.parse_noise("report")
    assert report["model"] == "report"
    assert set(report["miss_rate"]) == set(report["fp_rate"]) == set(S.DISEASES)
    assert all(0.15 <= r <= 0.45 for r in report["miss_rate"].values())
    assert all(0 < r <= S.REPORT_FP_CAP for r in report["fp_rate"].values())
    assert S.parse_noise(" Symmetric:0.2 ") == {"model": "symmetric", "spec": "symmetric:0.2",
                                                "rate": 0.2}
    assert S.parse_noise("bomd")["noise_ratio"] == 0.2
    assert S.parse_noise("bomd:0.6,0.5")["noise_p"] == 0.5
    assert S.parse_noise("none") == {"model": "none", "spec": "none"}


@pytest.mark.parametrize("spec", ["", "garbage", "symmetric", "symmetric:abc", "symmetric:1.5",
                                  "symmetric:0.1,0.2", "bomd:0.2", "bomd:0.2,x", "report:0.1",
                                  "none:0", "uniform:0.2"])
def test_parse_noise_rejects(spec):
    with pytest.raises(ValueError) as info:
        S.parse_noise(spec)
    assert repr(spec) in str(info.value)


# --------------------------------------------------------------------------------------
# clean labels
# --------------------------------------------------------------------------------------


def test_clean_labels_follow_stats():
    stats = S.load_label_stats()
    n = 30000
    labels = S.sample_clean_labels(np.random.default_rng(1), n)
    assert labels.shape == (n, 14) and labels.dtype == np.uint8
    for c, name in enumerate(NIH14_CLASSES):
        p = stats["nih"]["prevalence"][name]
        tol = 4 * np.sqrt(p * (1 - p) / n) + 1e-3
        assert abs(labels[:, c].mean() - p) < tol, name
    # No Finding is exactly "no disease", as in NIH
    assert np.array_equal(labels[:, NF], (labels[:, :NF].sum(axis=1) == 0).astype(np.uint8))
    # co-occurrence follows NIH: Effusion and Infiltration appear together far more often
    # than under independence
    eff, inf = NIH14_CLASSES.index("Effusion"), NIH14_CLASSES.index("Infiltration")
    joint = (labels[:, eff] & labels[:, inf]).mean()
    assert joint > 1.5 * labels[:, eff].mean() * labels[:, inf].mean()


def test_shifted_weights_match_padchest_prevalence():
    stats = S.load_label_stats()
    combos, _ = S.combo_table(stats)
    weights = S.shifted_combo_weights(stats)
    target = np.array([stats["padchest"]["prevalence"][c] for c in NIH14_CLASSES])
    np.testing.assert_allclose(weights @ combos, target, atol=1e-5)
    labels = S.sample_clean_labels(np.random.default_rng(2), 20000, weights, combos)
    assert abs(labels[:, NF].mean() - stats["padchest"]["prevalence"][NO_FINDING]) < 0.015
    assert labels[:, NF].mean() > 0.75  # PadChest-like, far above NIH's 0.56


# --------------------------------------------------------------------------------------
# noise models (labels only, no images)
# --------------------------------------------------------------------------------------


def _rates(clean, noisy):
    clean, noisy = clean.astype(bool), noisy.astype(bool)
    miss = (clean & ~noisy).sum(0) / np.maximum(clean.sum(0), 1)
    fp = (~clean & noisy).sum(0) / np.maximum((~clean).sum(0), 1)
    return (clean != noisy).mean(), miss, fp, clean.sum(0)


def test_symmetric_noise_rates():
    clean = S.sample_clean_labels(np.random.default_rng(3), 40000)
    noisy, _ = S.apply_noise(np.random.default_rng(4), clean, S.parse_noise("symmetric:0.2"))
    overall, miss, fp, pos = _rates(clean, noisy)
    assert abs(overall - 0.2) < 0.02
    for c in range(14):
        assert abs(fp[c] - 0.2) < 0.02, NIH14_CLASSES[c]
        if pos[c] >= 4000:  # 2 points >= 3 standard errors
            assert abs(miss[c] - 0.2) < 0.02, NIH14_CLASSES[c]


def test_report_noise_rates():
    config = S.parse_noise("report")
    clean = S.sample_clean_labels(np.random.default_rng(5), 200000)
    noisy, events = S.apply_noise(np.random.default_rng(6), clean, config)
    overall, miss, fp, pos = _rates(clean, noisy)
    expected = S.expected_noise_rates(clean, config)
    # overall flip rate: about 6%, as configured
    assert 0.04 < expected.mean() < 0.08
    assert abs(overall - expected.mean()) < 0.02
    assert abs(overall - 0.06) < 0.02
    paired = {c for pair in S.SIMILAR_PAIRS for c in pair}
    for c, name in enumerate(S.DISEASES):
        # classes outside the similar pairs: observed rates == configured rates
        if name not in paired:
            assert abs(fp[c] - config["fp_rate"][name]) < 0.02, name
            if pos[c] >= 5000:  # 2 points >= 3 standard errors
                assert abs(miss[c] - config["miss_rate"][name]) < 0.02, name
        # every class: observed rates == rates implied by miss, swap and fp together
        assert abs(fp[c] - expected[~clean[:, c].astype(bool), c].mean()) < 0.02, name
        if pos[c] >= 5000:
            assert abs(miss[c] - expected[clean[:, c].astype(bool), c].mean()) < 0.02, name
    # pair confusion: a Mass/Effusion/Infiltration positive is labelled as its partner
    for a, b in S.SIMILAR_PAIRS:
        i, j = NIH14_CLASSES.index(a), NIH14_CLASSES.index(b)
        sel = (clean[:, i] == 1) & (clean[:, j] == 0)
        swap = (1 - config["miss_rate"][a]) * config["pair_swap_rate"]
        want = swap + (1 - swap) * config["fp_rate"][b]
        assert abs(noisy[sel, j].mean() - want) < 0.02, (a, b)
    # No Finding is recomputed from the noisy diseases, then 5% are made inconsistent
    inconsistent = (noisy[:, NF] == 1) == noisy[:, :NF].any(axis=1)
    assert abs(inconsistent.mean() - config["no_finding_flip_rate"]) < 0.01
    # measure_noise reports the same numbers
    measured = S.measure_noise(clean, noisy, config, events)
    assert measured["cell_flip_rate"] == pytest.approx(overall, abs=1e-5)
    assert measured["mechanism"]["pair_swap_rate"] == pytest.approx(0.2, abs=0.02)


def test_bomd_noise():
    config = S.parse_noise("bomd:0.2,0.2")
    clean = S.sample_clean_labels(np.random.default_rng(7), 20000)
    noisy, events = S.apply_noise(np.random.default_rng(8), clean, config)
    assert events["chosen"] == pytest.approx(0.2 * len(clean), abs=2)
    changed = (noisy != clean).any(axis=1)
    assert changed.sum() <= events["chosen"]
    # a chosen No Finding image changes only if its No Finding bit and a disease bit flip
    # (otherwise the consistency step restores it)
    normal = clean[:, NF] == 1
    assert abs(changed[normal].mean() - 0.2 * 0.2 * (1 - 0.8 ** 13)) < 0.01
    # a chosen image with findings changes whenever one of its 14 bits flips
    assert abs(changed[~normal].mean() - 0.2 * (1 - 0.8 ** 14)) < 0.02
    # No Finding consistent with the diseases on every row
    assert np.array_equal(noisy[:, NF] == 1, noisy[:, :NF].sum(axis=1) == 0)


def test_no_noise():
    clean = S.sample_clean_labels(np.random.default_rng(9), 100)
    noisy, _ = S.apply_noise(np.random.default_rng(10), clean, S.parse_noise("none"))
    assert np.array_equal(noisy, clean)


# --------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------


def test_generation_is_deterministic(tmp_path):
    a = S.generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = S.generate_synthetic(tmp_path / "b", seed=3, **SMALL)
    c = S.generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    assert a.read_bytes() == b.read_bytes()
    files = _files(a.parent)
    assert files == _files(b.parent) and len(files) == 112
    assert all((a.parent / f).read_bytes() == (b.parent / f).read_bytes() for f in files)
    da, dc = json.loads(a.read_text()), json.loads(c.read_text())
    assert [i["clean_label"] for i in da["training"]] != [i["clean_label"] for i in dc["training"]]
    assert any((a.parent / f).read_bytes() != (c.parent / f).read_bytes() for f in files)


def test_datalist_content(tmp_path):
    path = S.generate_synthetic(tmp_path / "ds", seed=0, num_training=300, num_validation=50,
                                num_test=40, num_test_shifted=40, progress=False)
    d = json.loads(path.read_text())
    assert d["classes"] == NIH14_CLASSES
    patients = set()
    for split in S.SPLITS:
        for item in d[split]:
            assert item["image"].startswith(f"{split}/")
            assert len(item["label"]) == len(item["clean_label"]) == 14
            patients.add(item["patient"])
            if split.startswith("test"):
                assert item["label"] == item["clean_label"]
    assert len(patients) == 430  # one image per patient, no patient in two splits
    with Image.open(path.parent / d["training"][0]["image"]) as img:
        assert img.mode == "L" and img.size == (32, 32)
    gen = d["generator"]
    assert gen["seed"] == 0 and gen["noise"] == "report" and gen["image_size"] == 32
    assert gen["noise_config"]["model"] == "report"
    # measured_noise describes exactly the labels in the datalist
    clean = np.array([i["clean_label"] for i in d["training"]])
    noisy = np.array([i["label"] for i in d["training"]])
    measured = gen["measured_noise"]["training"]
    assert measured["cell_flip_rate"] == pytest.approx((clean != noisy).mean(), abs=1e-5)
    assert (clean != noisy).any()
    assert set(gen["measured_noise"]) == {"training", "validation"}
    for row in measured["per_class"].values():
        assert {"missed_positive_rate", "false_positive_rate",
                "expected_missed_positive_rate", "expected_false_positive_rate"} <= set(row)


def test_image_size_64(tmp_path):
    path = S.generate_synthetic(tmp_path / "ds", num_training=4, num_validation=0, num_test=0,
                                num_test_shifted=3, image_size=64, noise="none", progress=False)
    d = json.loads(path.read_text())
    for item in d["training"] + d["test_shifted"]:
        with Image.open(path.parent / item["image"]) as img:
            assert img.mode == "L" and img.size == (64, 64)


@pytest.mark.parametrize("kwargs", [{"image_size": 8}, {"image_size": 1024}, {"image_size": 32.5},
                                    {"num_training": -1}, {"num_test": 1.5}, {"seed": -1},
                                    {"noise": "nonsense"}])
def test_invalid_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError):
        S.generate_synthetic(tmp_path / "ds", **{**SMALL, **kwargs})
    assert not (tmp_path / "ds" / "datalist.json").exists()


# --------------------------------------------------------------------------------------
# caching
# --------------------------------------------------------------------------------------


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NVUM_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert S.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NVUM_CACHE_DIR")
    assert S.default_cache_dir() == tmp_path / "b" / "nvum"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(S.default_cache_dir()).endswith(os.path.join(".cache", "nvum"))


def test_ensure_synthetic_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("NVUM_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = S.dataset._generate
    monkeypatch.setattr(S.dataset, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = S.ensure_synthetic(seed=5, **SMALL)
    assert first.parent.parent == tmp_path / "cache" and first.parent.name.startswith("synthetic-")
    mtime = first.stat().st_mtime_ns
    second = S.ensure_synthetic(seed=5, **SMALL)
    assert second == first and len(calls) == 1 and first.stat().st_mtime_ns == mtime
    other = S.ensure_synthetic(seed=6, **SMALL)
    assert other.parent != first.parent and len(calls) == 2
    # no temporary folders are left behind
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.parent.name, other.parent.name])


def test_ensure_synthetic_explicit_root(tmp_path):
    root = tmp_path / "data"
    path = S.ensure_synthetic(root, seed=1, **SMALL)
    assert path == root / "datalist.json"
    assert S.ensure_synthetic(root, seed=1, **SMALL) == path
    with pytest.raises(ValueError, match="other parameters"):
        S.ensure_synthetic(root, seed=2, **SMALL)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_generation_leaves_nothing_complete(monkeypatch, tmp_path, error):
    real = S.render_images
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(S.dataset, "render_images", failing)
    root = tmp_path / "data"
    with pytest.raises(error):
        S.ensure_synthetic(root, **SMALL)
    assert not root.exists()
    assert list(tmp_path.rglob("datalist.json")) == []
    assert list(tmp_path.iterdir()) == []  # the partial folder was removed
    monkeypatch.setattr(S.dataset, "render_images", real)
    path = S.ensure_synthetic(root, **SMALL)
    assert path.exists() and len(_files(root)) == 112


# --------------------------------------------------------------------------------------
# label statistics (custom/data/synthetic/stats.py) on small hand-written tables
# --------------------------------------------------------------------------------------


def test_derive_label_stats(tmp_path):
    from custom.data.synthetic.stats import derive_label_stats
    from custom.tools.cli import cli

    nih = tmp_path / "nih.csv"
    nih.write_text(
        "Image Index,Finding Labels,Patient ID\n"
        "a.png,No Finding,1\nb.png,No Finding,2\nc.png,Effusion|Infiltration,3\n"
        "d.png,Infiltration|Effusion,4\ne.png,Consolidation|Effusion,5\nf.png,Hernia,6\n")
    header = ("ImageID,PatientID,PatientBirth,Projection,MethodProjection,MethodLabel,Labels\n")
    manual = "Manual review of DICOM fields"
    rows = [
        f"1.png,p1,1950,PA,{manual},Physician,['normal']",
        f"2.png,p2,1950,AP,{manual},Physician,\"['pleural effusion', 'cardiomegaly']\"",
        f"3.png,p2,1950,PA,{manual},Physician,['nodule']",  # second image of p2: dropped
        f"4.png,p3,1950,L,{manual},Physician,['nodule']",  # lateral: dropped
        f"5.png,p4,1950,PA,{manual},RNN_model,['nodule']",  # not physician: dropped
        f"6.png,p5,2015,PA,{manual},Physician,['nodule']",  # age 4: dropped
        f"7.png,p6,1950,PA,{manual},Physician,['fracture']",  # outside the scheme: dropped
        f"8.png,p7,1950,PA,{manual},Physician,['ground glass pattern']",  # -> Infiltration
        f"9.png,p8,,PA,{manual},Physician,['normal']",  # no birth year: dropped
    ]
    padchest = tmp_path / "padchest.csv"
    padchest.write_text(header + "\n".join(rows) + "\n")

    stats = derive_label_stats(nih, padchest)
    assert stats["classes"] == NIH14_CLASSES
    assert stats["nih"]["num_images"] == 5 and stats["nih"]["num_dropped_consolidation"] == 1
    combos = {tuple(c["labels"]): c["count"] for c in stats["nih"]["combos"]}
    assert combos == {("No Finding",): 2, ("Effusion", "Infiltration"): 2, ("Hernia",): 1}
    assert stats["nih"]["prevalence"]["Infiltration"] == pytest.approx(0.4)
    pc = stats["padchest"]
    assert pc["num_images"] == 3
    assert pc["prevalence"]["No Finding"] == pytest.approx(1 / 3)
    assert pc["prevalence"]["Effusion"] == pytest.approx(1 / 3)
    assert pc["prevalence"]["Cardiomegaly"] == pytest.approx(1 / 3)
    assert pc["prevalence"]["Infiltration"] == pytest.approx(1 / 3)
    assert pc["prevalence"]["Nodule"] == 0

    out = tmp_path / "stats.json"
    assert cli.main(["synthetic_stats", "--nih_csv", str(nih), "--padchest_csv", str(padchest), "--output", str(out),
                     "--min_count", "2"]) == 0
    written = json.loads(out.read_text())
    assert len(written["nih"]["combos"]) == 2 and "left out" in written["notes"][1]

    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels\nx.png,Effusion|Unicorn\n")
    with pytest.raises(ValueError, match="Unicorn"):
        derive_label_stats(bad)
