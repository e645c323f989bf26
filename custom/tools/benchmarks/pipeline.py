"""The cached data pipeline over decoding and resizing every epoch (``python -m custom.cli benchmark_pipeline``)."""

from __future__ import annotations

import statistics
import time

from ..training import train_parser
from .common import environment, order, write

def _bundle_training_data(datalist_path, image_size: int, batch_size: int, num_workers: int):
    """The training preprocessing and the (not yet built) cached dataset exactly as ``train.json``
    defines them, for another data list, image size, batch and worker count."""
    return train_parser({
        "datalist": {"_target_": "custom.DataList", "path": str(datalist_path)},
        "image_size": image_size, "batch_size": batch_size, "num_workers": num_workers,
    })


def _epoch(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def pipeline(num_images: int = 1000, source_size: int = 256, image_size: int = 128, batch_size: int = 64,
             num_workers: int = 0, repeats: int = 3, epochs: int = 6, root: str | None = None,
             output: str | None = "results/benchmark_pipeline.json") -> dict:
    """Epoch throughput of the bundle's cached pipeline over decoding and resizing every epoch.

    Synthetic PNGs of ``source_size`` pixels (generated once into the data cache) are turned into
    ``image_size`` training tensors by the training preprocessing of ``train.json`` (load,
    grey/resize/normalise, random affine if switched on, random flip). ``cached``: the training
    dataset and data loader of ``train.json`` (``CacheDataset``: decoded, resized tensors kept,
    only the random transforms run per epoch). ``naive``: a plain ``Dataset`` running the whole
    chain -- decoding and resizing included -- for every image in every epoch, with the same
    data loader settings. The one-off cache build is timed separately and folded into an
    ``epochs``-epoch total. Target: cached / naive >= 3.
    """
    from monai.data import DataLoader, Dataset

    from ...data.synthetic import ensure_synthetic

    path = ensure_synthetic(
        root, num_training=num_images, num_validation=16, num_test=16, num_test_shifted=16, image_size=source_size
    )
    parser = _bundle_training_data(path, image_size, batch_size, num_workers)
    items = parser.get_parsed_content("data").items("training")
    naive = DataLoader(
        Dataset(items, parser.get_parsed_content("train#preprocessing")),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
    )
    start = time.perf_counter()
    cache = parser.get_parsed_content("train#dataset")
    build = time.perf_counter() - start
    cached = parser.get_parsed_content("train#dataloader")
    assert cached.dataset is cache
    _epoch(naive), _epoch(cached)  # warm-up (file cache, allocator)
    seconds = {"naive": [], "cached": []}
    loaders = {"naive": naive, "cached": cached}
    for r in range(repeats):
        for name in order(loaders, r):
            loader = loaders[name]
            seconds[name].append(_epoch(loader))
            print(f"repeat {r + 1}/{repeats} {name:6s} {len(items) / seconds[name][-1]:9.1f} images/s", flush=True)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    rate = {k: len(items) / v for k, v in median.items()}
    total_naive, total_cached = epochs * median["naive"], build + epochs * median["cached"]
    result = {"benchmark": "pipeline", "num_images": len(items), "source_size": source_size,
        "image_size": image_size, "batch_size": batch_size, "num_workers": num_workers, "repeats": repeats,
        **environment(), "images_per_s": rate, "ratio_cached_to_naive": rate["cached"] / rate["naive"],
        "cache_build_s": build, "epochs": epochs, f"ratio_{epochs}_epochs_with_build": total_naive / total_cached,
        "all_epoch_s": seconds}
    print(
        f"\npipeline   images/s   ({len(items)} PNGs {source_size}px -> {image_size}px, batch {batch_size}, "
        f"{num_workers} workers)"
    )
    for name in ("naive", "cached"):
        print(f"{name:8s} {rate[name]:10.1f}")
    verdict = "meets" if result["ratio_cached_to_naive"] >= 3 else "misses"
    print(
        f"cached / naive = {result['ratio_cached_to_naive']:.2f} per epoch ({verdict} the >= 3 target); cache "
        f"built in {build:.1f}s, "
        f"{epochs} epochs including the build: {result[f'ratio_{epochs}_epochs_with_build']:.2f}x"
    )
    write(result, output)
    return result
