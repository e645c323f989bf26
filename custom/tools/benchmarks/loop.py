"""The bundle's training loop over a hand-written PyTorch loop (``python -m custom.cli benchmark_loop``)."""

from __future__ import annotations

import statistics
import time

import torch

from .common import OPTION_HELP, Settings, environment, network_and_memory, order, random_batches, write  # noqa: F401 (OPTION_HELP: --help)

def _nvum_parts(num_samples: int, num_classes: int, seed: int, settings: Settings, tiny: bool = False):
    from ...nvum import build_loss

    net, memory = network_and_memory(num_samples, num_classes, seed, settings, tiny)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[4], gamma=0.1)
    return net, memory, build_loss("nvum", memory), optimizer, scheduler


def _run_bundle_loop(
    batches, epochs: int, num_samples: int, num_classes: int, seed: int, settings: Settings, tiny: bool = False
):
    """The training loop of ``train.json``: NVUMTrainer with its training handlers (validation,
    checkpoints and MLflow left out: they are not part of the loop's cost per step)."""
    from ignite.handlers import ProgressBar
    from monai.handlers import LrScheduleHandler, StatsHandler

    from ...nvum import EMATeacher, MemoryUpdater
    from ...training import NVUMTrainer

    net, memory, loss, optimizer, scheduler = _nvum_parts(num_samples, num_classes, seed, settings, tiny)
    teacher = EMATeacher(net, use=False)
    handlers = [
        LrScheduleHandler(scheduler, print_lr=False),
        teacher,
        MemoryUpdater(memory, "epoch", teacher),
        ProgressBar(persist=False, disable=None),
        StatsHandler(iteration_log=False),
    ]
    trainer = NVUMTrainer(
        device=settings.device,
        max_epochs=epochs,
        train_data_loader=batches,
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        decollate=False,
        amp=settings.amp,
        train_handlers=handlers,
    )
    settings.sync()
    start = time.perf_counter()
    trainer.run()
    settings.sync()
    return time.perf_counter() - start, memory.values.cpu()


def _run_plain_loop(
    batches, epochs: int, num_samples: int, num_classes: int, seed: int, settings: Settings, tiny: bool = False
):
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


def loop(batch_size: int = 64, image_size: int = 32, steps: int = 10, epochs: int = 2, repeats: int = 5,
         num_classes: int = 14, seed: int = 0, device=None, amp=None, channels_last=None,
         output: str | None = "results/benchmark_loop.json") -> dict:
    """Throughput of the bundle's training loop over a minimal hand-written loop, side by side.

    Both train the same DenseNet121 (same initial weights) with Adam and the NVUM loss (paper
    schedule: logits collected, memory updated at the end of each epoch) on the same in-memory
    batches, for ``epochs`` epochs of ``steps`` steps; data loading is left out so that the
    ratio shows the loop's own cost. Both end with the same memory (checked and reported).
    Target: bundle / plain >= 0.95. ``device``, ``amp``, ``channels_last``: as in :func:`step`.
    """
    settings = Settings(device, amp, channels_last)
    num_samples = batch_size * steps
    batches = random_batches(steps, batch_size, image_size, num_classes, seed, settings)
    runners = {"plain": _run_plain_loop, "bundle": _run_bundle_loop}
    for run in runners.values():  # warm-up
        run(batches[:2], 1, num_samples, num_classes, seed, settings)
    rates = {k: [] for k in runners}
    memories = {}
    for r in range(repeats):
        for name in order(runners, r):
            seconds, memories[name] = runners[name](batches, epochs, num_samples, num_classes, seed, settings)
            rates[name].append(epochs * num_samples / seconds)
            print(f"repeat {r + 1}/{repeats} {name:7s} {rates[name][-1]:8.1f} images/s", flush=True)
    difference = float((memories["bundle"] - memories["plain"]).abs().max())
    median = {k: statistics.median(v) for k, v in rates.items()}
    overhead = _loop_overhead(settings, num_classes, seed)
    step_ms = 1e3 * batch_size / median["plain"]
    implied = step_ms / (step_ms + overhead["bundle"] - overhead["plain"])
    result = {"benchmark": "loop", "batch_size": batch_size, "image_size": image_size, "steps": steps,
        "epochs": epochs, "repeats": repeats, **environment(), **settings.describe(), "images_per_s": median,
        "ratio_bundle_to_plain": median["bundle"] / median["plain"], "max_memory_difference": difference,
        "all_images_per_s": rates, "overhead_ms_per_step_tiny_network": overhead, "plain_step_ms": step_ms,
        "ratio_implied_by_overhead": implied}
    print("\nloop      images/s")
    for name in runners:
        print(f"{name:7s} {median[name]:10.1f}")
    verdict = "meets" if result["ratio_bundle_to_plain"] >= 0.95 else "misses"
    print(f"bundle / plain = {result['ratio_bundle_to_plain']:.3f} ({verdict} the >= 0.95 target); "
          f"largest difference between the two final memories: {difference:.2e}")
    print(
        f"loop cost per step with a negligible network (median): plain {overhead['plain']:.2f} ms, bundle "
        f"{overhead['bundle']:.2f} ms; "
        f"against the {step_ms:.0f} ms step measured above this implies bundle / plain = {implied:.4f}"
    )
    write(result, output)
    return result


def _loop_overhead(settings: Settings, num_classes: int, seed: int, steps: int = 100, repeats: int = 5) -> dict:
    """Milliseconds per step of both loops around a network that computes next to nothing
    (8-pixel images, batch 64): the loop machinery's own cost, which noise on a busy machine
    hides in the DenseNet comparison."""
    batches = random_batches(steps, 64, 8, num_classes, seed, settings)
    runners = {"plain": _run_plain_loop, "bundle": _run_bundle_loop}
    times = {k: [] for k in runners}
    for r in range(repeats):
        for name in order(runners, r):
            seconds, _ = runners[name](batches, 1, 64 * steps, num_classes, seed, settings, tiny=True)
            times[name].append(1e3 * seconds / steps)
    return {k: statistics.median(v) for k, v in times.items()}
