"""Speed benchmarks of the bundle, each measured side by side in one run (``python -m custom.cli
benchmark_<name>``); not tests. Every benchmark prints a table and writes ``results/<name>.json``.

- :func:`step`: training-step throughput of NVUM (both memory schedules) over plain BCE.
- :func:`loop`: the bundle's training loop (``NVUMTrainer`` and its handlers) over a minimal
  hand-written PyTorch loop doing the same work (same network, optimiser, loss, batches).
- :func:`pipeline`: the bundle's cached data pipeline over decoding and resizing the PNGs anew
  in every epoch.
- :func:`memory`: bytes of the NVUM memory and the time of its updates for several N and batch
  sizes.

Timings on a shared machine are noisy: the compared variants run in turn, ``repeats`` times,
and medians are reported.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

STEP_METHODS = ("bce", "nvum_epoch", "nvum_iteration")


def _environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})",
    }


def _order(names, repeat: int) -> list:
    """The variants in turn, reversed every other repeat, so that no variant always runs first."""
    names = list(names)
    return names if repeat % 2 == 0 else names[::-1]


def _write(result: dict, output: str | None) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {output}")


class _Settings:
    """Device, mixed precision and memory layout of a benchmark; ``None`` picks the bundle's
    defaults (the first GPU with AMP and channels-last when CUDA is available, else the CPU)."""

    def __init__(self, device=None, amp=None, channels_last=None):
        from .utils import as_bool

        cuda = torch.cuda.is_available()
        self.device = torch.device(device if device is not None else ("cuda:0" if cuda else "cpu"))
        self.amp = as_bool(amp, "amp") if amp is not None else self.device.type == "cuda"
        self.channels_last = as_bool(channels_last, "channels_last") if channels_last is not None else self.device.type == "cuda"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"device_used": str(self.device), "amp": self.amp, "channels_last": self.channels_last}


def _random_batches(steps: int, batch_size: int, image_size: int, num_classes: int, seed: int, settings: _Settings | None = None) -> list[dict]:
    """Random batches, already on the benchmark's device (data loading is not measured)."""
    settings = settings or _Settings("cpu", False, False)
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch_size, 3, image_size, image_size, generator=g).to(settings.device).contiguous(memory_format=settings.memory_format),
            "label": (torch.rand(batch_size, num_classes, generator=g) < 0.1).float().to(settings.device),
            "index": torch.arange(i * batch_size, (i + 1) * batch_size, device=settings.device),
        }
        for i in range(steps)
    ]


def _network(num_classes: int, seed: int, settings: _Settings | None = None):
    from monai.networks.nets import DenseNet121

    settings = settings or _Settings("cpu", False, False)
    torch.manual_seed(seed)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=num_classes).to(settings.device, memory_format=settings.memory_format)


class _TinyNetwork(torch.nn.Module):
    """A network with negligible compute, to expose a loop's own cost per step."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------------------------
# NVUM step throughput over BCE


def _network_and_memory(num_samples: int, num_classes: int, seed: int, settings: _Settings, tiny: bool):
    """The seeded network (DenseNet121, or a negligible one with ``tiny``) and a fresh memory."""
    from .memory import NVUMMemory

    if tiny:
        torch.manual_seed(seed)
        net = _TinyNetwork(num_classes).to(settings.device)
    else:
        net = _network(num_classes, seed, settings)
    return net, NVUMMemory(num_samples, torch.full((num_classes,), 0.1)).to(settings.device)


def _step_trainer(method: str, batches, num_samples: int, num_classes: int, seed: int, settings: _Settings, tiny: bool = False):
    from .engines import NVUMTrainer
    from .handlers import EMATeacher, HandlerGroup, MemoryUpdater
    from .losses import build_loss
    from .performance import PrepareImageBatch

    net, memory = _network_and_memory(num_samples, num_classes, seed, settings, tiny)
    loss = build_loss("bce" if method == "bce" else "nvum", memory)
    teacher = EMATeacher(net, enabled=method == "nvum_iteration")
    updater = MemoryUpdater(memory, "iteration" if method == "nvum_iteration" else "epoch", teacher, enabled=method != "bce")
    return NVUMTrainer(
        device=settings.device,
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=loss,
        decollate=False,
        amp=settings.amp,
        prepare_batch=PrepareImageBatch(settings.channels_last),
        train_handlers=[HandlerGroup([teacher, updater])],
    )


def step(batch_size: int = 64, image_size: int = 32, steps: int = 20, repeats: int = 5, num_classes: int = 14, seed: int = 0, device=None, amp=None, channels_last=None, output: str | None = "results/benchmark_step.json") -> dict:
    """Training-step throughput of NVUM relative to plain BCE, measured side by side.

    Every method trains the same DenseNet121 on the same random batches through the bundle's
    trainer (``NVUMTrainer``) and handlers; the methods run in turn, ``repeats`` times, and the
    median images/s is reported with its ratio to BCE. ``nvum_epoch`` (the paper's schedule)
    includes collecting logits and the end-of-epoch memory update; ``nvum_iteration`` includes
    the EMA teacher's update and forward pass. Target: ``nvum_epoch`` >= 0.97 of BCE.

    ``device``, ``amp`` and ``channels_last`` default to the bundle's choice (GPU with both on
    when CUDA is available); e.g. ``--image_size 512 --batch_size 32`` gives the images/s of
    NIH-sized inputs on a GPU (data loading excluded).
    """
    settings = _Settings(device, amp, channels_last)
    num_samples = batch_size * steps
    batches = _random_batches(steps, batch_size, image_size, num_classes, seed, settings)
    rates = {m: [] for m in STEP_METHODS}
    for m in STEP_METHODS:  # warm-up (allocator, oneDNN/cuDNN kernels)
        _step_trainer(m, batches[:2], num_samples, num_classes, seed, settings).run()
    settings.sync()
    for r in range(repeats):
        for m in _order(STEP_METHODS, r):
            trainer = _step_trainer(m, batches, num_samples, num_classes, seed, settings)
            settings.sync()
            start = time.perf_counter()
            trainer.run()
            settings.sync()
            rates[m].append(num_samples / (time.perf_counter() - start))
            print(f"repeat {r + 1}/{repeats} {m:15s} {rates[m][-1]:8.1f} images/s", flush=True)
    base = statistics.median(rates["bce"])
    extra = _step_extra_cost(settings, num_classes, seed)
    step_ms = 1e3 * batch_size / base
    implied = step_ms / (step_ms + extra["nvum_epoch"] - extra["bce"])
    result = {
        "benchmark": "step", "batch_size": batch_size, "image_size": image_size, "steps": steps, "repeats": repeats, **_environment(), **settings.describe(),
        "images_per_s": {m: statistics.median(v) for m, v in rates.items()},
        "ratio_to_bce": {m: statistics.median(v) / base for m, v in rates.items()},
        "all_images_per_s": rates,
        "ms_per_step_tiny_network": extra, "bce_step_ms": step_ms, "nvum_epoch_ratio_implied_by_extra_cost": implied,
    }
    print(f"\nmethod           images/s   ratio to BCE   ({settings.device}, amp {settings.amp}, channels-last {settings.channels_last}, {image_size}px, batch {batch_size})")
    for m in STEP_METHODS:
        print(f"{m:15s} {result['images_per_s'][m]:9.1f}   {result['ratio_to_bce'][m]:.3f}")
    verdict = "meets" if result["ratio_to_bce"]["nvum_epoch"] >= 0.97 else "misses"
    print(f"nvum_epoch / bce = {result['ratio_to_bce']['nvum_epoch']:.3f} ({verdict} the >= 0.97 target)")
    print("cost per step with a negligible network (median, ms): " + ", ".join(f"{m} {t:.2f}" for m, t in extra.items())
          + f"; NVUM's extra {extra['nvum_epoch'] - extra['bce']:.2f} ms against the {step_ms:.0f} ms BCE step above implies "
          f"nvum_epoch / bce = {implied:.4f} (the iteration schedule's extra cost is mostly the teacher's forward pass, "
          "which a negligible network does not show)")
    _write(result, output)
    return result


# ------------------------------------------------------------------------------------------------
# the bundle's loop over a hand-written loop


def _nvum_parts(num_samples: int, num_classes: int, seed: int, settings: _Settings, tiny: bool = False):
    from .losses import build_loss

    net, memory = _network_and_memory(num_samples, num_classes, seed, settings, tiny)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[4], gamma=0.1)
    return net, memory, build_loss("nvum", memory), optimizer, scheduler


def _run_bundle_loop(batches, epochs: int, num_samples: int, num_classes: int, seed: int, settings: _Settings, tiny: bool = False):
    """The training loop of ``train.json``: NVUMTrainer with its training handlers (validation,
    checkpoints and MLflow left out: they are not part of the loop's cost per step)."""
    from monai.handlers import LrScheduleHandler

    from .engines import NVUMTrainer
    from .handlers import EMATeacher, EpochSummary, HandlerGroup, LossAverages, MemoryUpdater, ProgressBar
    from .performance import PrepareImageBatch

    net, memory, loss, optimizer, scheduler = _nvum_parts(num_samples, num_classes, seed, settings, tiny)
    teacher = EMATeacher(net, enabled=False)
    handlers = [
        LrScheduleHandler(scheduler, print_lr=False),
        HandlerGroup([teacher, MemoryUpdater(memory, "epoch", teacher)]),
        LossAverages(),
        ProgressBar(),
        EpochSummary(max_epochs=epochs),
    ]
    trainer = NVUMTrainer(
        device=settings.device, max_epochs=epochs, train_data_loader=batches, network=net, optimizer=optimizer, loss_function=loss,
        decollate=False, amp=settings.amp, prepare_batch=PrepareImageBatch(settings.channels_last), train_handlers=handlers,
    )
    settings.sync()
    start = time.perf_counter()
    trainer.run()
    settings.sync()
    return time.perf_counter() - start, memory.values.cpu()


def _run_plain_loop(batches, epochs: int, num_samples: int, num_classes: int, seed: int, settings: _Settings, tiny: bool = False):
    """The same training written as a bare PyTorch loop: forward (under autocast with AMP),
    NVUM loss in float32, backward (scaled with AMP), step, logits collected for the
    end-of-epoch memory update, learning-rate schedule per epoch."""
    net, memory, loss, optimizer, scheduler = _nvum_parts(num_samples, num_classes, seed, settings, tiny)
    scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.amp)
    settings.sync()
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        pending = torch.zeros_like(memory.values)
        seen = torch.zeros(num_samples, dtype=torch.bool, device=settings.device)
        for batch in batches:
            image, label, index = batch["image"], batch["label"], batch["index"]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(settings.device.type, enabled=settings.amp):
                logits = net(image)
            scaler.scale(loss(logits.float(), label, index)["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            pending[index] = logits.detach().float()
            seen[index] = True
        rows = seen.nonzero().flatten()
        memory.update(rows, pending[rows])
        scheduler.step()
    settings.sync()
    return time.perf_counter() - start, memory.values.cpu()


def loop(batch_size: int = 64, image_size: int = 32, steps: int = 10, epochs: int = 2, repeats: int = 5, num_classes: int = 14, seed: int = 0, device=None, amp=None, channels_last=None, output: str | None = "results/benchmark_loop.json") -> dict:
    """Throughput of the bundle's training loop over a minimal hand-written loop, side by side.

    Both train the same DenseNet121 (same initial weights) with Adam and the NVUM loss (paper
    schedule: logits collected, memory updated at the end of each epoch) on the same in-memory
    batches, for ``epochs`` epochs of ``steps`` steps; data loading is left out so that the
    ratio shows the loop's own cost. Both end with the same memory (checked and reported).
    Target: bundle / plain >= 0.95. ``device``, ``amp``, ``channels_last``: as in :func:`step`.
    """
    settings = _Settings(device, amp, channels_last)
    num_samples = batch_size * steps
    batches = _random_batches(steps, batch_size, image_size, num_classes, seed, settings)
    runners = {"plain": _run_plain_loop, "bundle": _run_bundle_loop}
    for run in runners.values():  # warm-up
        run(batches[:2], 1, num_samples, num_classes, seed, settings)
    rates = {k: [] for k in runners}
    memories = {}
    for r in range(repeats):
        for name in _order(runners, r):
            seconds, memories[name] = runners[name](batches, epochs, num_samples, num_classes, seed, settings)
            rates[name].append(epochs * num_samples / seconds)
            print(f"repeat {r + 1}/{repeats} {name:7s} {rates[name][-1]:8.1f} images/s", flush=True)
    difference = float((memories["bundle"] - memories["plain"]).abs().max())
    median = {k: statistics.median(v) for k, v in rates.items()}
    overhead = _loop_overhead(settings, num_classes, seed)
    step_ms = 1e3 * batch_size / median["plain"]
    implied = step_ms / (step_ms + overhead["bundle"] - overhead["plain"])
    result = {
        "benchmark": "loop", "batch_size": batch_size, "image_size": image_size, "steps": steps, "epochs": epochs, "repeats": repeats, **_environment(), **settings.describe(),
        "images_per_s": median, "ratio_bundle_to_plain": median["bundle"] / median["plain"],
        "max_memory_difference": difference, "all_images_per_s": rates,
        "overhead_ms_per_step_tiny_network": overhead, "plain_step_ms": step_ms, "ratio_implied_by_overhead": implied,
    }
    print("\nloop      images/s")
    for name in runners:
        print(f"{name:7s} {median[name]:10.1f}")
    verdict = "meets" if result["ratio_bundle_to_plain"] >= 0.95 else "misses"
    print(f"bundle / plain = {result['ratio_bundle_to_plain']:.3f} ({verdict} the >= 0.95 target); "
          f"largest difference between the two final memories: {difference:.2e}")
    print(f"loop cost per step with a negligible network (median): plain {overhead['plain']:.2f} ms, bundle {overhead['bundle']:.2f} ms; "
          f"against the {step_ms:.0f} ms step measured above this implies bundle / plain = {implied:.4f}")
    _write(result, output)
    return result


def _step_extra_cost(settings: _Settings, num_classes: int, seed: int, steps: int = 100, repeats: int = 5) -> dict:
    """Milliseconds per step of each method around a network that computes next to nothing
    (8-pixel images, batch 64): what the loss and memory handlers add, which noise on a busy
    machine hides in the DenseNet comparison."""
    batches = _random_batches(steps, 64, 8, num_classes, seed, settings)
    times = {m: [] for m in STEP_METHODS}
    for r in range(repeats):
        for m in _order(STEP_METHODS, r):
            trainer = _step_trainer(m, batches, 64 * steps, num_classes, seed, settings, tiny=True)
            settings.sync()
            start = time.perf_counter()
            trainer.run()
            settings.sync()
            times[m].append(1e3 * (time.perf_counter() - start) / steps)
    return {m: statistics.median(v) for m, v in times.items()}


def _loop_overhead(settings: _Settings, num_classes: int, seed: int, steps: int = 100, repeats: int = 5) -> dict:
    """Milliseconds per step of both loops around a network that computes next to nothing
    (8-pixel images, batch 64): the loop machinery's own cost, which noise on a busy machine
    hides in the DenseNet comparison."""
    batches = _random_batches(steps, 64, 8, num_classes, seed, settings)
    runners = {"plain": _run_plain_loop, "bundle": _run_bundle_loop}
    times = {k: [] for k in runners}
    for r in range(repeats):
        for name in _order(runners, r):
            seconds, _ = runners[name](batches, 1, 64 * steps, num_classes, seed, settings, tiny=True)
            times[name].append(1e3 * seconds / steps)
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------
# cached pipeline over decoding and resizing every epoch


def _bundle_training_data(datalist_path, image_size: int, batch_size: int, num_workers: int):
    """The training preprocessing and the (not yet built) cached dataset exactly as ``train.json``
    defines them, for another data list, image size, batch and worker count."""
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.update({
        "datalist": {"_target_": "custom.DataList", "path": str(datalist_path)},
        "image_size": image_size, "batch_size": batch_size, "num_workers": num_workers,
    })
    return parser


def _epoch(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def pipeline(num_images: int = 1000, source_size: int = 256, image_size: int = 128, batch_size: int = 64, num_workers: int = 0, repeats: int = 3, epochs: int = 6, root: str | None = None, output: str | None = "results/benchmark_pipeline.json") -> dict:
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

    from .synthetic import ensure_synthetic

    path = ensure_synthetic(root, num_training=num_images, num_validation=16, num_test=16, num_test_shifted=16, image_size=source_size)
    parser = _bundle_training_data(path, image_size, batch_size, num_workers)
    items = parser.get_parsed_content("datalist").items("training")
    naive = DataLoader(Dataset(items, parser.get_parsed_content("train#preprocessing")), batch_size=batch_size, shuffle=True, num_workers=num_workers)
    start = time.perf_counter()
    cache = parser.get_parsed_content("train#dataset")
    build = time.perf_counter() - start
    cached = parser.get_parsed_content("train#dataloader")
    assert cached.dataset is cache
    _epoch(naive), _epoch(cached)  # warm-up (file cache, allocator)
    seconds = {"naive": [], "cached": []}
    loaders = {"naive": naive, "cached": cached}
    for r in range(repeats):
        for name in _order(loaders, r):
            loader = loaders[name]
            seconds[name].append(_epoch(loader))
            print(f"repeat {r + 1}/{repeats} {name:6s} {len(items) / seconds[name][-1]:9.1f} images/s", flush=True)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    rate = {k: len(items) / v for k, v in median.items()}
    total_naive, total_cached = epochs * median["naive"], build + epochs * median["cached"]
    result = {
        "benchmark": "pipeline", "num_images": len(items), "source_size": source_size, "image_size": image_size, "batch_size": batch_size,
        "num_workers": num_workers, "repeats": repeats, **_environment(),
        "images_per_s": rate, "ratio_cached_to_naive": rate["cached"] / rate["naive"],
        "cache_build_s": build, "epochs": epochs, f"ratio_{epochs}_epochs_with_build": total_naive / total_cached,
        "all_epoch_s": seconds,
    }
    print(f"\npipeline   images/s   ({len(items)} PNGs {source_size}px -> {image_size}px, batch {batch_size}, {num_workers} workers)")
    for name in ("naive", "cached"):
        print(f"{name:8s} {rate[name]:10.1f}")
    verdict = "meets" if result["ratio_cached_to_naive"] >= 3 else "misses"
    print(f"cached / naive = {result['ratio_cached_to_naive']:.2f} per epoch ({verdict} the >= 3 target); cache built in {build:.1f}s, "
          f"{epochs} epochs including the build: {result[f'ratio_{epochs}_epochs_with_build']:.2f}x")
    _write(result, output)
    return result


# ------------------------------------------------------------------------------------------------
# memory footprint and update cost


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory(sizes=(1_000, 10_000, 100_000, 1_000_000), batch_sizes=(16, 64, 256, 1024, 4096), num_classes: int = 14, repeats: int = 200, threads: int = 1, seed: int = 0, output: str | None = "results/benchmark_memory.json") -> dict:
    """Bytes of the NVUM memory and the time of one update, for several N and batch sizes.

    The memory is one N x C float32 buffer, so it must take exactly N x C x 4 bytes. One update
    (eq. 3 for a batch of B distinct rows: the ``iteration`` schedule's step, and what the loss
    reads) should cost time proportional to B and independent of N. The ``epoch`` schedule's
    end-of-epoch update touches every row seen in the epoch, once per epoch; its time is
    reported too. Runs on ``threads`` intra-op threads (default 1: these small indexing
    operations gain nothing from more, and on a busy machine a waiting thread adds
    scheduler delays that have nothing to do with N).
    """
    from .memory import NVUMMemory

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        return _memory(sizes, batch_sizes, num_classes, repeats, seed, output)
    finally:
        torch.set_num_threads(previous_threads)


def _memory(sizes, batch_sizes, num_classes, repeats, seed, output) -> dict:
    from .memory import NVUMMemory

    g = torch.Generator().manual_seed(seed)
    sizes, batch_sizes = [int(n) for n in sizes], [int(b) for b in batch_sizes]
    table, footprint, epoch_update = {}, {}, {}
    for n in sizes:
        mem = NVUMMemory(n, torch.full((num_classes,), 0.1))
        nbytes = mem.values.element_size() * mem.values.nelement()
        footprint[n] = {"bytes": nbytes, "expected": n * num_classes * 4, "equal": nbytes == n * num_classes * 4}
        table[n] = {}
        for b in batch_sizes:
            if b > n:
                continue
            index = torch.randperm(n, generator=g)[:b]
            logits = torch.randn(b, num_classes, generator=g)
            table[n][b] = _median_time(lambda: mem.update(index, logits), repeats)
        rows, logits = torch.arange(n), torch.randn(n, num_classes, generator=g)
        epoch_update[n] = _median_time(lambda: mem.update(rows, logits), max(3, repeats // 50))
        print(f"N={n:>9,d}: {nbytes:>11,d} bytes (N x C x 4 = {n * num_classes * 4:,d}); update of B rows: "
              + ", ".join(f"B={b} {t * 1e6:.0f}us" for b, t in table[n].items()), flush=True)
    # time per row from the largest batch, and the spread over N at each batch size
    spread = {b: max(table[n][b] for n in sizes if b in table[n]) / min(table[n][b] for n in sizes if b in table[n]) for b in batch_sizes}
    per_row_us = {n: 1e6 * (table[n][max(table[n])] - table[n][min(table[n])]) / (max(table[n]) - min(table[n])) for n in sizes if len(table[n]) > 1}
    result = {
        "benchmark": "memory", "num_classes": num_classes, "repeats": repeats, **_environment(),
        "footprint": {str(n): v for n, v in footprint.items()},
        "update_us": {str(n): {str(b): t * 1e6 for b, t in row.items()} for n, row in table.items()},
        "slope_us_per_row": {str(n): v for n, v in per_row_us.items()},
        "spread_over_N_at_each_B": {str(b): v for b, v in spread.items()},
        "epoch_update_all_rows_ms": {str(n): t * 1e3 for n, t in epoch_update.items()},
    }
    print("\nupdate time (us, median of %d) -- rows: N, columns: batch size B" % repeats)
    print("N".rjust(10) + "".join(f"{b:>9d}" for b in batch_sizes) + "   us/row   all-rows update (ms)")
    for n in sizes:
        cells = "".join(f"{table[n][b] * 1e6:9.1f}" if b in table[n] else " " * 9 for b in batch_sizes)
        print(f"{n:>10,d}{cells}   {per_row_us.get(n, float('nan')):6.3f}   {epoch_update[n] * 1e3:9.2f}")
    print("largest / smallest time over N at each B: " + ", ".join(f"B={b}: {s:.2f}" for b, s in spread.items()))
    print("bytes == N x C x 4 for every N: " + str(all(v["equal"] for v in footprint.values())))
    _write(result, output)
    return result
