"""Bytes of the NVUM memory and the time of its updates (``python -m custom.cli benchmark_memory``)."""

from __future__ import annotations

import torch

from ...nvum import NVUMMemory
from .common import environment, median_time, write

def memory(
    sizes=(1_000, 10_000, 100_000, 1_000_000),
    batch_sizes=(16, 64, 256, 1024, 4096),
    num_classes: int = 14,
    repeats: int = 200,
    threads: int = 1,
    seed: int = 0,
    output: str | None = "results/benchmark_memory.json",
) -> dict:
    """Bytes of the NVUM memory and the time of one update, for several N and batch sizes.

    The memory is one N x C float32 buffer, so it must take exactly N x C x 4 bytes. One update
    (eq. 3 for a batch of B distinct rows: the ``iteration`` schedule's step, and what the loss
    reads) should cost time proportional to B and independent of N. The ``epoch`` schedule's
    end-of-epoch update touches every row seen in the epoch, once per epoch; its time is
    reported too. Runs on ``threads`` intra-op threads (default 1: these small indexing
    operations gain nothing from more, and on a busy machine a waiting thread adds
    scheduler delays that have nothing to do with N).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        return _memory(sizes, batch_sizes, num_classes, repeats, seed, output)
    finally:
        torch.set_num_threads(previous_threads)


def _memory(sizes, batch_sizes, num_classes, repeats, seed, output) -> dict:
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
            table[n][b] = median_time(lambda: mem.update(index, logits), repeats)
        rows, logits = torch.arange(n), torch.randn(n, num_classes, generator=g)
        epoch_update[n] = median_time(lambda: mem.update(rows, logits), max(3, repeats // 50))
        print(f"N={n:>9,d}: {nbytes:>11,d} bytes (N x C x 4 = {n * num_classes * 4:,d}); update of B rows: "
              + ", ".join(f"B={b} {t * 1e6:.0f}us" for b, t in table[n].items()), flush=True)
    # time per row from the largest batch, and the spread over N at each batch size
    spread = {
        b: max(table[n][b] for n in sizes if b in table[n]) / min(table[n][b] for n in sizes if b in table[n])
        for b in batch_sizes
    }
    per_row_us = {
        n: 1e6 * (table[n][max(table[n])] - table[n][min(table[n])]) / (max(table[n]) - min(table[n]))
        for n in sizes
        if len(table[n]) > 1
    }
    result = {"benchmark": "memory", "num_classes": num_classes, "repeats": repeats, **environment(),
        "footprint": {str(n): v for n, v in footprint.items()},
        "update_us": {str(n): {str(b): t * 1e6 for b, t in row.items()} for n, row in table.items()},
        "slope_us_per_row": {str(n): v for n, v in per_row_us.items()},
        "spread_over_N_at_each_B": {str(b): v for b, v in spread.items()},
        "epoch_update_all_rows_ms": {str(n): t * 1e3 for n, t in epoch_update.items()}}
    print("\nupdate time (us, median of %d) -- rows: N, columns: batch size B" % repeats)
    print("N".rjust(10) + "".join(f"{b:>9d}" for b in batch_sizes) + "   us/row   all-rows update (ms)")
    for n in sizes:
        cells = "".join(f"{table[n][b] * 1e6:9.1f}" if b in table[n] else " " * 9 for b in batch_sizes)
        print(f"{n:>10,d}{cells}   {per_row_us.get(n, float('nan')):6.3f}   {epoch_update[n] * 1e3:9.2f}")
    print("largest / smallest time over N at each B: " + ", ".join(f"B={b}: {s:.2f}" for b, s in spread.items()))
    print("bytes == N x C x 4 for every N: " + str(all(v["equal"] for v in footprint.values())))
    write(result, output)
    return result
