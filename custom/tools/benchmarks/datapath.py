"""Images/s per data-loading worker from originals, pre-resized PNGs and the prepared store
(``python -m custom.cli benchmark_data``)."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from .common import environment, order, write

#: images/s one H100 should train at 512 pixels (10 x the paper's 46 images/s on one RTX 2080 Ti).
TARGET_IMAGES_PER_S = 460
#: the training recipe whose random transforms are run (the NIH overlay: crop and flip).
RECIPE = ("train.json", "datasets/nih.json")


def _sources(root: Path, num_images: int, source_size: int, image_size: int, seed: int, workers: int = 0) -> dict:
    """Data lists of the same images as ``source_size`` originals, ``image_size`` PNGs and a store (made once)."""
    from PIL import Image

    from ...data.synthetic import ensure_synthetic
    from ..prepare import prepare

    lists = {name: root / name / "list.json" for name in ("originals", "resized")}
    store_list = root / "store" / "datalist.json"
    if all(p.is_file() for p in lists.values()) and store_list.is_file():
        return {**lists, "store": store_list}
    synthetic = ensure_synthetic(None, num_training=num_images, num_validation=4, num_test=4, num_test_shifted=4,
                                 image_size=min(source_size, 512), seed=seed)
    content = json.loads(Path(synthetic).read_text())
    items = content["training"][:num_images]
    (root / "originals").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    originals = []
    for i, item in enumerate(items):  # upsampled, with detector-like noise so that the PNG is as hard to inflate
        grey = Image.open(Path(synthetic).parent / item["image"]).convert("L").resize((source_size, source_size),
                                                                                         Image.BICUBIC)
        noisy = np.clip(np.asarray(grey, dtype=np.int16) + rng.integers(-3, 4, (source_size, source_size)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(root / "originals" / f"{i:05d}.png")
        originals.append({"image": f"{i:05d}.png", "label": item["label"]})
    classes = content["classes"]
    lists["originals"].write_text(json.dumps({"classes": classes, "training": originals}))
    store_list = prepare(str(lists["originals"]), image_size, str(root / "store"), workers=workers, progress=False)
    (root / "resized").mkdir(exist_ok=True)
    stored = np.load(root / "store" / "images.npy", mmap_mode="r")
    for i in range(len(originals)):  # pre-resized PNGs: the same 8-bit grey images as the store
        Image.fromarray(np.array(stored[i])).save(root / "resized" / f"{i:05d}.png")
    lists["resized"].write_text(json.dumps({"classes": classes, "training": originals}))
    return {**lists, "store": store_list}


def _epoch(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def data_path(num_images: int = 64, source_size: int = 1024, image_size: int = 512, batch_size: int = 16,
              repeats: int = 3, seed: int = 0, root: str | None = None,
              output: str | None = "results/benchmark_data.json") -> dict:
    """Images/s of one data-loading worker process from three sources of the same images, side by side.

    ``originals``: ``source_size`` PNGs decoded, made grey and resized to ``image_size`` for every image in
    every epoch; ``resized``: PNGs already at ``image_size`` (decoded every epoch); ``store``: the prepared
    store (``python -m custom.cli prepare``), read from its memory map. Each runs the NIH overlay's training
    preprocessing (load, grey and resize, random resized crop, random flip, normalisation) in this one
    process (``num_workers`` 0, one thread: what one worker of the training's data loader does) with
    batches of ``batch_size``. Reports images/s per worker and the workers each needs for
    :data:`TARGET_IMAGES_PER_S`. Target: store >= 10 x originals.
    """
    import torch
    from monai.data import DataLoader, Dataset

    from ...data import DataList
    from ...data.synthetic import default_cache_dir
    from ..training import CONFIG_DIR, train_parser

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        name = f"data-path-{num_images}-{source_size}-{image_size}-{seed}"
        folder = Path(root) if root else default_cache_dir() / name
        lists = _sources(folder, num_images, source_size, image_size, seed)
        parser = train_parser({"image_size": image_size}, [CONFIG_DIR / f for f in RECIPE])
        preprocessing = parser.get_parsed_content("train#preprocessing")
        loaders = {name: DataLoader(Dataset(DataList(path, image_size=image_size, required_splits=()).items(
            "training"), preprocessing), batch_size=batch_size, shuffle=True, num_workers=0)
            for name, path in lists.items()}
        for loader in loaders.values():
            _epoch(loader)  # warm-up: page cache, allocator
        seconds = {name: [] for name in loaders}
        for r in range(repeats):
            for name in order(loaders, r):
                seconds[name].append(_epoch(loaders[name]))
                print(f"repeat {r + 1}/{repeats} {name:9s} {num_images / seconds[name][-1]:8.1f} images/s", flush=True)
    finally:
        torch.set_num_threads(threads)
    rate = {name: num_images / statistics.median(v) for name, v in seconds.items()}
    workers = {name: math.ceil(TARGET_IMAGES_PER_S / r) for name, r in rate.items()}
    result = {"benchmark": "data_path", "num_images": num_images, "source_size": source_size,
              "image_size": image_size, "batch_size": batch_size, "repeats": repeats, **environment(),
              "images_per_s_per_worker": rate, "workers_for_target": workers,
              "target_images_per_s": TARGET_IMAGES_PER_S,
              "ratio_store_to_originals": rate["store"] / rate["originals"],
              "ratio_resized_to_originals": rate["resized"] / rate["originals"], "all_epoch_s": seconds}
    print(f"\nsource      images/s per worker   workers for {TARGET_IMAGES_PER_S} images/s   ({num_images} images, "
          f"{source_size}px originals -> {image_size}px, NIH crop and flip, one thread)")
    for name in loaders:
        print(f"{name:10s} {rate[name]:16.1f} {workers[name]:18d}")
    verdict = "meets" if result["ratio_store_to_originals"] >= 10 else "misses"
    print(f"store / originals = {result['ratio_store_to_originals']:.1f} per worker ({verdict} the >= 10 target); "
          f"pre-resized PNGs / originals = {result['ratio_resized_to_originals']:.1f}")
    write(result, output)
    return result
