"""What the speed benchmarks share: settings, seeded batches and networks, side-by-side timing, output."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from ...files import write_json
from ...nvum import NVUMMemory

#: what the speed benchmarks' shared options mean (their ``--help``).
OPTION_HELP = {
    "batch_size": "images per step.",
    "image_size": "input height and width.",
    "repeats": "measurements per variant (the median is reported).",
    "num_classes": "outputs of the network.",
    "seed": "seed of the batches and the network.",
    "device": "cpu or cuda (default: the bundle's choice).",
    "amp": "mixed precision (default: on with CUDA).",
    "channels_last": "channels-last memory layout (default: on with CUDA).",
    "output": "JSON file of the results (empty: none).",
}

def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})",
    }


def order(names, repeat: int) -> list:
    """The variants in turn, reversed every other repeat, so that no variant always runs first."""
    names = list(names)
    return names if repeat % 2 == 0 else names[::-1]


def write(result: dict, output: str | None) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_json(result, output, indent=2)
        print(f"written to {output}")


class Settings:
    """Device, mixed precision and memory layout of a benchmark; ``None`` picks the bundle's
    defaults (the first GPU with AMP and channels-last when CUDA is available, else the CPU)."""

    def __init__(self, device=None, amp=None, channels_last=None):
        from ...flags import as_bool

        cuda = torch.cuda.is_available()
        self.device = torch.device(device if device is not None else ("cuda:0" if cuda else "cpu"))
        self.amp = as_bool(amp, "amp") if amp is not None else self.device.type == "cuda"
        self.channels_last = (
            as_bool(channels_last, "channels_last") if channels_last is not None else self.device.type == "cuda"
        )
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"device_used": str(self.device), "amp": self.amp, "channels_last": self.channels_last}


def random_batches(
    steps: int, batch_size: int, image_size: int, num_classes: int, seed: int, settings: Settings | None = None
) -> list[dict]:
    """Random batches, already on the benchmark's device (data loading is not measured)."""
    settings = settings or Settings("cpu", False, False)
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch_size, 3, image_size, image_size, generator=g)
            .to(settings.device)
            .contiguous(memory_format=settings.memory_format),
            "label": (torch.rand(batch_size, num_classes, generator=g) < 0.1).float().to(settings.device),
            "index": torch.arange(i * batch_size, (i + 1) * batch_size, device=settings.device),
        }
        for i in range(steps)
    ]


def _network(num_classes: int, seed: int, settings: Settings | None = None):
    """The network of ``train.json`` (DenseNet121 by default), seeded."""
    from ..training import bundle_network

    settings = settings or Settings("cpu", False, False)
    torch.manual_seed(seed)
    return bundle_network(num_classes).to(settings.device, memory_format=settings.memory_format)


class _TinyNetwork(torch.nn.Module):
    """A network with negligible compute, to expose a loop's own cost per step."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


def network_and_memory(num_samples: int, num_classes: int, seed: int, settings: Settings, tiny: bool):
    """The seeded network (DenseNet121, or a negligible one with ``tiny``) and a fresh memory."""
    if tiny:
        torch.manual_seed(seed)
        net = _TinyNetwork(num_classes).to(settings.device)
    else:
        net = _network(num_classes, seed, settings)
    return net, NVUMMemory(num_samples, torch.full((num_classes,), 0.1)).to(settings.device)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
