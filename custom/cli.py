"""Command-line jobs that are not bundle workflows: ``python -m custom.cli <command> [--flags]``.

Commands:
    benchmark_step   training-step throughput of NVUM (both schedules) against plain BCE.
    synthetic        generate (or find) the synthetic data set and print its data-list path.
    export           TorchScript model.ts and the deployable bundle zip from a checkpoint, checked offline.
    register         export, then log the bundle and the pyfunc model to MLflow and register it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

METHODS = ("bce", "nvum_epoch", "nvum_iteration")


def _trainer(method: str, batches, num_samples: int, num_classes: int, seed: int):
    from monai.networks.nets import DenseNet121

    from .engines import NVUMTrainer
    from .handlers import EMATeacher, HandlerGroup, MemoryUpdater
    from .losses import build_loss
    from .memory import NVUMMemory

    torch.manual_seed(seed)
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=num_classes)
    memory = NVUMMemory(num_samples, torch.full((num_classes,), 0.1))
    loss = build_loss("bce" if method == "bce" else "nvum", memory)
    teacher = EMATeacher(net, enabled=method == "nvum_iteration")
    updater = MemoryUpdater(memory, "iteration" if method == "nvum_iteration" else "epoch", teacher, enabled=method != "bce")
    return NVUMTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=loss,
        decollate=False,
        train_handlers=[HandlerGroup([teacher, updater])],
    )


def benchmark_step(batch_size: int = 64, image_size: int = 32, steps: int = 20, repeats: int = 3, num_classes: int = 14, seed: int = 0, output: str = "results/benchmark_step.json"):
    """Training-step throughput of NVUM relative to plain BCE, measured side by side.

    Every method trains the same DenseNet121 on the same random batches through the bundle's
    trainer (``NVUMTrainer``) and handlers; the methods are run in turn, ``repeats`` times, and
    the median images/s is reported with its ratio to BCE. ``nvum_epoch`` includes collecting
    logits and the end-of-epoch memory update; ``nvum_iteration`` includes the EMA teacher's
    update and forward pass.
    """
    g = torch.Generator().manual_seed(seed)
    num_samples = batch_size * steps
    batches = [
        {
            "image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
            "label": (torch.rand(batch_size, num_classes, generator=g) < 0.1).float(),
            "index": torch.arange(i * batch_size, (i + 1) * batch_size),
        }
        for i in range(steps)
    ]
    rates = {m: [] for m in METHODS}
    for m in METHODS:  # warm-up (allocator, oneDNN kernels)
        _trainer(m, batches[:2], num_samples, num_classes, seed).run()
    for r in range(repeats):
        for m in METHODS:
            trainer = _trainer(m, batches, num_samples, num_classes, seed)
            start = time.perf_counter()
            trainer.run()
            rates[m].append(num_samples / (time.perf_counter() - start))
            print(f"repeat {r + 1}/{repeats} {m:15s} {rates[m][-1]:8.1f} images/s", flush=True)
    base = statistics.median(rates["bce"])
    result = {
        "batch_size": batch_size, "image_size": image_size, "steps": steps, "repeats": repeats,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "images_per_s": {m: statistics.median(v) for m, v in rates.items()},
        "ratio_to_bce": {m: statistics.median(v) / base for m, v in rates.items()},
    }
    print("\nmethod           images/s   ratio to BCE")
    for m in METHODS:
        print(f"{m:15s} {result['images_per_s'][m]:9.1f}   {result['ratio_to_bce'][m]:.3f}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {output}")
    return None


def synthetic(root: str | None = None, **params):
    """Generate the synthetic set if needed (same parameters as ``custom.synthetic.generate_synthetic``); print the data-list path."""
    from .synthetic import ensure_synthetic

    print(ensure_synthetic(root, **params))


def export(checkpoint="bundle/models/model.pt", **kwargs):
    """``model.ts`` and the deployable zip from a checkpoint (see ``custom.deploy.export_command``)."""
    from .deploy import export_command

    export_command(checkpoint, **kwargs)


def register(checkpoint="bundle/models/model.pt", **kwargs):
    """Export, log to MLflow and register a checkpoint (see ``custom.deploy.register_command``)."""
    from .deploy import register_command

    register_command(checkpoint, **kwargs)


def main():
    import fire

    fire.Fire({"benchmark_step": benchmark_step, "synthetic": synthetic, "export": export, "register": register})


if __name__ == "__main__":
    main()
