"""Gathering the rows of the NVUM memory updates from every process of a multi-process run.

:class:`RowGatherer` is what :class:`custom.nvum.MemoryUpdater` calls before each memory update:
it collects the dataset indices and logits of every rank and keeps each image once per epoch, so
that the memory stays identical on every rank. :func:`all_gather_rows` (also used by the AUC
metric on sharded evaluation sets) and :func:`first_unseen` are its two steps. In a single process
everything here is the identity. The training package re-exports them (and :func:`world_size`) as
``custom.distributed.*``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes of the running process group; 1 without one (also ``custom.distributed.world_size``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """The device collectives of the current backend run on: CUDA for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation over the ranks (rank 0 first) of tensors whose first dimension may differ.

    The identity in a single process. The result is a plain tensor (a MONAI ``MetaTensor``'s
    metadata is dropped) on the input's device.
    """
    ws = world_size()
    if ws == 1:
        return tensor
    device = _comm_device(tensor)
    local = tensor.detach().as_subclass(torch.Tensor).to(device).contiguous()
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(ws)]
    dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    counts = [int(c) for c in counts]
    padded = local.new_zeros((max(counts),) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ws)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(tensor.device)


def first_unseen(index: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Positions in ``index`` of the first occurrence of every index not yet marked in ``seen``;
    marks them. ``index``: (B,) int64; ``seen``: (N,) bool, updated in place."""
    index = index.long()
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = order[first]
    keep = keep[~seen[index[keep]]]
    keep = keep.sort().values
    seen[index[keep]] = True
    return keep


class RowGatherer:
    """The dataset indices and logits of one training step on every rank, each image once per epoch.

    In a single process it returns its input unchanged. Otherwise it concatenates the ranks' rows
    and drops the rows of images already given in the same epoch: ``DistributedSampler`` pads the
    last steps with repeats of the epoch's first images so that every rank gets the same number,
    and a one-process run sees (and updates the memory for) each image once per epoch.

    Args:
        num_rows: N, the number of training images (rows of the memory).
    """

    def __init__(self, num_rows: int):
        self.num_rows = int(num_rows)
        self._epoch = None
        self._seen = None

    def __call__(self, index: torch.Tensor, logits: torch.Tensor, epoch: int | None = None):
        if world_size() == 1:
            return index, logits
        index = all_gather_rows(torch.as_tensor(index).long().flatten().to(logits.device))
        logits = all_gather_rows(logits)
        if self._seen is None or epoch != self._epoch:
            self._epoch = epoch
            self._seen = torch.zeros(self.num_rows, dtype=torch.bool, device=index.device)
        keep = first_unseen(index, self._seen)
        return index[keep], logits[keep]
