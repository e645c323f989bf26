"""One process of the GPU report's torchrun row: DenseNet121 trained with DistributedDataParallel on random batches.

``torchrun --standalone --nproc_per_node=N -m custom.tools.benchmarks.ddp_step SIZE BATCH STEPS AMP CL CPU OUT``;
rank 0 writes ``{"images_per_s_per_process": ...}`` to OUT.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist


def main(size: int, batch: int, steps: int, amp: bool, channels_last: bool, cpu: bool, out: str) -> None:
    from .common import Settings, _network

    local = int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("gloo" if cpu else "nccl")
    if not cpu:
        torch.cuda.set_device(local)
    settings = Settings("cpu" if cpu else f"cuda:{local}", amp, channels_last)
    net = torch.nn.parallel.DistributedDataParallel(_network(14, 0, settings))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(settings.device.type, enabled=amp and not cpu)
    x = torch.randn(batch, 3, size, size, device=settings.device).contiguous(memory_format=settings.memory_format)
    y = (torch.rand(batch, 14, device=settings.device) < 0.1).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(settings.device.type, enabled=amp):
            logits = net(x)
        scaler.scale(torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)).backward()
        scaler.step(optimizer)
        scaler.update()

    step()
    settings.sync()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    settings.sync()
    dist.barrier()
    rate = batch * steps / (time.perf_counter() - start)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"images_per_s_per_process": rate, "processes": dist.get_world_size()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), int(a[2]), a[3] == "1", a[4] == "1", a[5] == "1", a[6])
