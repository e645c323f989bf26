"""NVUM's training-step throughput over plain BCE (``python -m custom.cli benchmark_step``)."""

from __future__ import annotations

import statistics
import time

import torch

from .common import OPTION_HELP, Settings, environment, network_and_memory, order, random_batches, write  # noqa: F401 (OPTION_HELP: --help)

#: method -> (loss, memory schedule, update before the loss, EMA teacher); the names of the noise benchmark
STEP_METHODS = {
    "bce": ("bce", "epoch", False, False),
    "nvum": ("nvum", "epoch", True, False),  # the paper's order, the bundle's default
    "nvum_epoch_end": ("nvum", "epoch", False, False),
    "nvum_iteration": ("nvum", "iteration", True, True),
}


def _step_trainer(
    method: str, batches, num_samples: int, num_classes: int, seed: int, settings: Settings, tiny: bool = False
):
    from ...training import NVUMTrainer
    from ...nvum import EMATeacher, MemoryUpdater
    from ...nvum import build_loss

    loss_name, schedule, before_loss, use_teacher = STEP_METHODS[method]
    net, memory = network_and_memory(num_samples, num_classes, seed, settings, tiny)
    loss = build_loss(loss_name, memory)
    teacher = EMATeacher(net, use=use_teacher)
    updater = MemoryUpdater(memory, schedule, teacher, enabled=loss_name != "bce", before_loss=before_loss)
    return NVUMTrainer(
        device=settings.device,
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=loss,
        decollate=False,
        amp=settings.amp,
        train_handlers=[teacher, updater],
    )


def step(batch_size: int = 64, image_size: int = 32, steps: int = 20, repeats: int = 5, num_classes: int = 14,
         seed: int = 0, device=None, amp=None, channels_last=None,
         output: str | None = "results/benchmark_step.json") -> dict:
    """Training-step throughput of NVUM relative to plain BCE, measured side by side.

    Every method trains the same DenseNet121 on the same random batches through the bundle's
    trainer (``NVUMTrainer``) and handlers; the methods run in turn, ``repeats`` times, and the
    median images/s is reported with its ratio to BCE. ``nvum`` (the paper's order, the default)
    includes the memory update of each batch's rows before the loss; ``nvum_epoch_end`` collects the
    logits and updates every row at the end of the epoch; ``nvum_iteration`` includes the EMA
    teacher's update and forward pass. Target: ``nvum`` >= 0.97 of BCE.

    ``device``, ``amp`` and ``channels_last`` default to the bundle's choice (GPU with both on
    when CUDA is available); e.g. ``--image_size 512 --batch_size 32`` gives the images/s of
    NIH-sized inputs on a GPU (data loading excluded).
    """
    settings = Settings(device, amp, channels_last)
    num_samples = batch_size * steps
    batches = random_batches(steps, batch_size, image_size, num_classes, seed, settings)
    rates = {m: [] for m in STEP_METHODS}
    for m in STEP_METHODS:  # warm-up (allocator, oneDNN/cuDNN kernels)
        _step_trainer(m, batches[:2], num_samples, num_classes, seed, settings).run()
    settings.sync()
    for r in range(repeats):
        for m in order(STEP_METHODS, r):
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
    implied = step_ms / (step_ms + extra["nvum"] - extra["bce"])
    result = {"benchmark": "step", "batch_size": batch_size, "image_size": image_size, "steps": steps,
        "repeats": repeats, **environment(), **settings.describe(),
        "images_per_s": {m: statistics.median(v) for m, v in rates.items()},
        "ratio_to_bce": {m: statistics.median(v) / base for m, v in rates.items()}, "all_images_per_s": rates,
        "ms_per_step_tiny_network": extra, "bce_step_ms": step_ms, "nvum_ratio_implied_by_extra_cost": implied}
    print(
        f"\nmethod           images/s   ratio to BCE   ({settings.device}, amp {settings.amp}, channels-last "
        f"{settings.channels_last}, {image_size}px, batch {batch_size})"
    )
    for m in STEP_METHODS:
        print(f"{m:15s} {result['images_per_s'][m]:9.1f}   {result['ratio_to_bce'][m]:.3f}")
    verdict = "meets" if result["ratio_to_bce"]["nvum"] >= 0.97 else "misses"
    print(f"nvum / bce = {result['ratio_to_bce']['nvum']:.3f} ({verdict} the >= 0.97 target)")
    print(
        "cost per step with a negligible network (median, ms): "
        + ", ".join(f"{m} {t:.2f}" for m, t in extra.items())
        + f"; NVUM's extra {extra['nvum'] - extra['bce']:.2f} ms against the {step_ms:.0f} ms BCE step "
          f"above implies "
        f"nvum / bce = {implied:.4f} (the iteration schedule's extra cost is mostly the teacher's forward pass, "
        "which a negligible network does not show)"
    )
    write(result, output)
    return result


def _step_extra_cost(settings: Settings, num_classes: int, seed: int, steps: int = 100, repeats: int = 5) -> dict:
    """Milliseconds per step of each method around a network that computes next to nothing
    (8-pixel images, batch 64): what the loss and memory handlers add, which noise on a busy
    machine hides in the DenseNet comparison."""
    batches = random_batches(steps, 64, 8, num_classes, seed, settings)
    times = {m: [] for m in STEP_METHODS}
    for r in range(repeats):
        for m in order(STEP_METHODS, r):
            trainer = _step_trainer(m, batches, 64 * steps, num_classes, seed, settings, tiny=True)
            settings.sync()
            start = time.perf_counter()
            trainer.run()
            settings.sync()
            times[m].append(1e3 * (time.perf_counter() - start) / steps)
    return {m: statistics.median(v) for m, v in times.items()}
