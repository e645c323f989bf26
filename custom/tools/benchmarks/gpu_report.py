"""The GPU report (``python -m custom.cli gpu_report``): every speed figure of a GPU machine in one Markdown table.

On a CUDA machine it finishes in a few minutes; ``dry_run`` runs a tiny version of every row (on the CPU when
there is no GPU), so that the command is exercised by the tests.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import Settings, environment, random_batches

#: (image sizes, training batch per size, steps, warm-up steps, store images, loader workers, inference batch)
FULL = {"sizes": (224, 512), "batch": {224: 64, 512: 16}, "steps": 20, "warmup": 3, "store_images": 256,
        "source_size": 1024, "workers": (4, 8, 16), "infer_batch": 64}
DRY = {"sizes": (32, 48), "batch": {32: 2, 48: 2}, "steps": 1, "warmup": 1, "store_images": 6, "source_size": 64,
       "workers": (1, 2), "infer_batch": 2}
MODES = {"fp32": (False, False), "AMP": (True, False), "AMP + channels-last": (True, True)}


def _train_rate(method: str, size: int, batch: int, steps: int, warmup: int, amp: bool, channels_last: bool,
                device) -> tuple[float, float]:
    """(images/s, peak memory in MB) of the bundle's training step (NVUMTrainer) on random batches."""
    from .step import _step_trainer

    settings = Settings(device, amp, channels_last)
    batches = random_batches(steps, batch, size, 14, 0, settings)
    _step_trainer(method, batches[:warmup], batch * steps, 14, 0, settings).run()
    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    trainer = _step_trainer(method, batches, batch * steps, 14, 0, settings)
    settings.sync()
    start = time.perf_counter()
    trainer.run()
    settings.sync()
    rate = batch * steps / (time.perf_counter() - start)
    if settings.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(settings.device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rate, peak


def _inference_rate(size: int, batch: int, steps: int, amp: bool, channels_last: bool, device) -> float:
    from .common import _network

    settings = Settings(device, amp, channels_last)
    net = _network(14, 0, settings).eval()
    x = torch.randn(batch, 3, size, size, device=settings.device).contiguous(memory_format=settings.memory_format)
    with torch.no_grad(), torch.autocast(settings.device.type, enabled=amp):
        net(x)
        settings.sync()
        start = time.perf_counter()
        for _ in range(steps):
            net(x)
        settings.sync()
    return batch * steps / (time.perf_counter() - start)


def _loader_rates(plan: dict, size: int, root: Path) -> dict:
    """Images/s of train.json's data loader (NIH overlay's preprocessing) reading the prepared store."""
    from monai.data import DataLoader, Dataset

    from ...data import DataList
    from ..training import CONFIG_DIR, train_parser
    from .datapath import RECIPE, _sources

    lists = _sources(root, plan["store_images"], plan["source_size"], size, 0, workers=os.cpu_count() or 1)
    items = DataList(lists["store"], image_size=size, required_splits=()).items("training")
    preprocessing = train_parser({"image_size": size}, [CONFIG_DIR / f for f in RECIPE]).get_parsed_content(
        "train#preprocessing")
    rates = {}
    for workers in plan["workers"]:
        loader = DataLoader(Dataset(items, preprocessing), batch_size=plan["batch"][size], shuffle=True,
                            num_workers=workers, persistent_workers=True)
        next(iter(loader))  # workers started
        start = time.perf_counter()
        for _ in loader:
            pass
        rates[workers] = len(items) / (time.perf_counter() - start)
    return rates


def _torchrun_rate(size: int, batch: int, steps: int, processes: int, amp: bool, channels_last: bool,
                   cpu: bool) -> float:
    """Images/s per process of ``processes`` DistributedDataParallel processes started by torchrun."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
               "custom.tools.benchmarks.ddp_step", str(size), str(batch), str(steps), str(int(amp)),
               str(int(channels_last)), str(int(cpu)), str(out)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())["images_per_s_per_process"]


def gpu_report(dry_run: bool = False, output: str | None = "results/gpu_report.md", root: str | None = None) -> str:
    """Measure and write the GPU report: one Markdown table (see bundle/docs/scaling.md).

    Rows: training images/s at 224 and 512 pixels in fp32, AMP and AMP + channels-last (NVUM, the bundle's
    trainer, random batches); the NVUM / BCE step ratio at 512 pixels; the data loader's images/s from the
    prepared store with 4, 8 and 16 workers; inference images/s; peak GPU memory of the 512-pixel step;
    and with more than one GPU, images/s per GPU of a ``torchrun`` run of all of them. ``dry_run``: a tiny
    version of every row (the torchrun row with two CPU processes), for the tests; without CUDA only the
    dry run is possible.
    """
    from ...data.synthetic import default_cache_dir

    cuda = torch.cuda.is_available()
    if not cuda and not dry_run:
        raise SystemExit("gpu_report needs a CUDA GPU; --dry_run true runs a tiny version of every row on the CPU")
    plan, device = (DRY if dry_run else FULL), ("cuda:0" if cuda else "cpu")
    small, large = plan["sizes"]
    rows, started = [], time.perf_counter()
    peak = 0.0
    for size in plan["sizes"]:
        for mode, (amp, channels_last) in MODES.items():
            rate, mem = _train_rate("nvum", size, plan["batch"][size], plan["steps"], plan["warmup"], amp,
                                    channels_last, device)
            rows.append((f"training images/s, {size} px, batch {plan['batch'][size]}, {mode}", f"{rate:.1f}"))
            if size == large and mode == "AMP + channels-last":
                peak = mem
    bce, _ = _train_rate("bce", large, plan["batch"][large], plan["steps"], plan["warmup"], True, True, device)
    nvum, _ = _train_rate("nvum", large, plan["batch"][large], plan["steps"], plan["warmup"], True, True, device)
    rows.append((f"NVUM / BCE step, {large} px, AMP + channels-last", f"{nvum / bce:.3f}"))
    store_root = Path(root) if root else default_cache_dir() / f"gpu-report-store-{large}-{plan['store_images']}"
    for workers, rate in _loader_rates(plan, large, store_root).items():
        rows.append((f"data loader images/s from the store, {large} px, {workers} workers", f"{rate:.1f}"))
    rate = _inference_rate(large, plan["infer_batch"], plan["steps"] * 2, True, True, device)
    rows.append((f"inference images/s, {large} px, batch {plan['infer_batch']}, AMP + channels-last", f"{rate:.1f}"))
    what = "peak GPU memory" if cuda else "peak memory of this process (CPU dry run)"
    rows.append((f"{what}, training {large} px, batch {plan['batch'][large]}, AMP + channels-last",
                 f"{peak / 1024:.2f} GB"))
    gpus = torch.cuda.device_count() if cuda else 0
    if gpus > 1 or dry_run:
        processes = gpus if gpus > 1 else 2
        rate = _torchrun_rate(large, plan["batch"][large], plan["steps"], processes, cuda, cuda, not cuda)
        rows.append((f"torchrun, {processes} {'GPUs' if cuda else 'CPU processes'}: training images/s per "
                     f"{'GPU' if cuda else 'process'}, {large} px", f"{rate:.1f}"))
    env = environment()
    lines = [f"GPU report: {env['device']}, torch {env['torch']}, {gpus or 'no'} GPU(s), "
             f"{time.perf_counter() - started:.0f} s{' (dry run: tiny sizes)' if dry_run else ''}", "",
             "| measurement | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(table)
        print(f"written to {output}")
    return table
