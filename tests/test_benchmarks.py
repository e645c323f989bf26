"""Every benchmark command of ``python -m custom.cli`` runs at a tiny size, so that none can break unseen."""

import json
import math

import pytest

from custom.tools.cli import cli

#: each benchmark command's tiny options (a benchmark command missing here fails the first test).
TINY = {
    "benchmark_step": ["--steps", "2", "--repeats", "1", "--batch_size", "4", "--image_size", "32"],
    "benchmark_loop": ["--steps", "2", "--epochs", "1", "--repeats", "1", "--batch_size", "4", "--image_size", "32"],
    "benchmark_pipeline": ["--num_images", "24", "--source_size", "48", "--image_size", "32", "--batch_size", "8",
                           "--repeats", "1", "--epochs", "2"],
    "benchmark_data": ["--num_images", "6", "--source_size", "96", "--image_size", "48", "--batch_size", "3",
                       "--repeats", "1"],
    "benchmark_memory": ["--sizes", "100,1000", "--batch_sizes", "16,64", "--repeats", "3"],
    "benchmark_ood_gate": ["--rounds", "1", "--image_size", "32"],  # with a tiny bundle: _tiny_gated_bundle
}


def _tiny_gated_bundle(root):
    """A bundle folder with an untrained DenseNet121 (seeded) as models/model.pt, its gate fitted on 8 synthetic
    images, and 6 images to infer; the options that point the benchmark at them."""
    import torch
    from monai.networks.nets import DenseNet121

    from custom.data.datalist import DataList
    from custom.data.synthetic.dataset import generate_synthetic
    from custom.evaluation.ood import fit_on_images, ood_path
    from custom.tools.training import train_parser

    datalist = DataList(generate_synthetic(root / "data", num_training=8, num_validation=4, num_test=6,
                                           num_test_shifted=0, progress=False))
    torch.manual_seed(0)
    network = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14).eval()
    (root / "models").mkdir(parents=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    transform = train_parser({"image_size": 32}).get_parsed_content("preprocessing")
    fit_on_images(network, datalist.items("training"), datalist.items("validation"), transform).save(
        ood_path(root / "models" / "model.pt"))
    return ["--bundle_root", str(root), "--input_path", str(root / "data" / "test")]


def test_every_benchmark_command_has_a_tiny_run_here():
    assert sorted(c for c in cli.commands if c.startswith("benchmark")) == sorted(TINY)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(TINY))
def test_benchmark_command_runs_at_a_tiny_size_and_writes_consistent_results(command, tmp_path):
    output = tmp_path / f"{command}.json"
    extra = _tiny_gated_bundle(tmp_path / "bundle") if command == "benchmark_ood_gate" else []
    assert cli.main([command, *TINY[command], *extra, "--output", str(output)]) in (0, None)
    result = json.loads(output.read_text())
    if command == "benchmark_step":
        assert set(result["images_per_s"]) == {"bce", "nvum", "nvum_epoch_end", "nvum_iteration"}
        assert result["ratio_to_bce"]["bce"] == 1.0 and all(v > 0 for v in result["images_per_s"].values())
        assert result["ratio_to_bce"]["nvum"] == pytest.approx(result["images_per_s"]["nvum"]
                                                               / result["images_per_s"]["bce"])
    elif command == "benchmark_loop":
        assert result["max_memory_difference"] < 1e-5  # the bundle's loop and the bare loop end with the same memory
        assert result["ratio_bundle_to_plain"] == pytest.approx(result["images_per_s"]["bundle"]
                                                                / result["images_per_s"]["plain"])
    elif command == "benchmark_pipeline":
        assert result["num_images"] == 24 and result["images_per_s"]["cached"] > 0
        assert result["ratio_cached_to_naive"] == pytest.approx(result["images_per_s"]["cached"]
                                                                / result["images_per_s"]["naive"])
    elif command == "benchmark_data":
        rate = result["images_per_s_per_worker"]
        assert set(rate) == {"originals", "resized", "store"} and result["num_images"] == 6
        assert result["ratio_store_to_originals"] == pytest.approx(rate["store"] / rate["originals"])
        assert all(result["workers_for_target"][k] == math.ceil(460 / rate[k]) for k in rate)
    elif command == "benchmark_ood_gate":
        assert result["num_images"] == 6 and result["on"] > 0 and result["off"] > 0 and result["rounds"] == 1
        assert result["ratio"] == pytest.approx(result["on"] / result["off"]) and 0 <= result["refused"] <= 6
    elif command == "benchmark_memory":
        assert result["footprint"]["1000"]["bytes"] == 1000 * 14 * 4
        assert set(result["update_us"]["1000"]) == {"16", "64"} and set(result["update_us"]["100"]) == {"16", "64"}


@pytest.mark.slow
def test_gpu_report_dry_run_measures_every_row_of_the_table(tmp_path):
    from custom.tools.benchmarks.gpu_report import DRY, MODES

    output = tmp_path / "gpu_report.md"
    assert cli.main(["gpu_report", "--dry_run", "true", "--output", str(output), "--root", str(tmp_path / "s")]) in (
        0, None)
    rows = dict(line.strip("| ").split(" | ") for line in output.read_text().splitlines()[4:])
    small, large = DRY["sizes"]
    expected = [f"training images/s, {s} px, batch 2, {m}" for s in DRY["sizes"] for m in MODES] + [
        f"NVUM / BCE step, {large} px, AMP + channels-last"] + [
        f"data loader images/s from the store, {large} px, {w} workers" for w in DRY["workers"]] + [
        f"inference images/s, {large} px, batch 2, AMP + channels-last",
        f"peak memory of this process (CPU dry run), training {large} px, batch 2, AMP + channels-last",
        f"torchrun, 2 CPU processes: training images/s per process, {large} px"]
    assert list(rows) == expected
    values = [float(v.split()[0]) for v in rows.values()]
    assert all(v > 0 for v in values)


def test_scaling_page_figures_are_those_of_their_result_files():
    """bundle/docs/scaling.md's data-path table, footprint table and GPU-report dry run come from the files in
    bundle/docs/scaling/ (regenerate both together)."""
    from conftest import ROOT

    docs = ROOT / "bundle" / "docs"
    page = (docs / "scaling.md").read_text()
    data = json.loads((docs / "scaling" / "benchmark_data.json").read_text())
    rate, workers = data["images_per_s_per_worker"], data["workers_for_target"]
    for label, key in [("1024-pixel PNG originals", "originals"), ("PNGs pre-resized to 512", "resized"),
                       ("prepared store", "store")]:
        assert f"| {label} | {rate[key]:.1f} | {workers[key]} |" in page
    assert f"Store / originals: **{data['ratio_store_to_originals']:.1f}x**" in page
    memory = json.loads((docs / "scaling" / "benchmark_memory_scale.json").read_text())
    for n, c in [(112120, 14), (224316, 8), (1000000, 14)]:
        row = (f"| {n * 224 * 224 / 1e9:.1f} GB | {n * 512 * 512 / 1e9:.1f} GB | {n * c * 4 / 1e6:.1f} MB (C = {c}) | "
               f"{memory['epoch_update_all_rows_ms'][str(n)]:.0f} ms |")
        assert row in page, row
    assert (docs / "scaling" / "gpu_report_dry_run.md").read_text().strip() in page
    # short trainings from the originals, the store and the originals with random lowest bits (seeds 0-5)
    import numpy as np
    import pandas as pd
    from scipy import stats

    runs = pd.read_csv(docs / "scaling" / "store_vs_originals.csv")
    gap, lsb = (runs["store"] - runs["originals"]) * 100, (runs["originals_lsb"] - runs["originals"]) * 100
    half = stats.t.ppf(0.975, len(gap) - 1) * gap.std(ddof=1) / np.sqrt(len(gap))
    text = " ".join(page.split())
    means = runs["originals"].mean(), runs["store"].mean()
    for figure in (f"mean AUC {means[0]:.4f} from the originals, {means[1]:.4f} from the store",
                   f"**{gap.mean():+.2f} points** (target: within 0.5; 95% interval over the six pairs "
                   f"{gap.mean() - half:+.1f} to {gap.mean() + half:+.1f})",
                   f"goes from {gap.min():+.1f} to {gap.max():+.1f} points",
                   f"move it from {lsb.min():+.1f} to {lsb.max():+.1f} (mean {lsb.mean():+.2f})"):
        assert figure in text, figure
    assert list(runs["seed"]) == list(range(6))
