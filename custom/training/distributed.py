"""Data-parallel training on several processes (``torchrun``), with an NVUM memory kept identical
on every rank.

``bundle/configs/multi_gpu_train.json`` puts these pieces together:

- :func:`init_process_group` / :func:`destroy_process_group`: NCCL when CUDA is present, else gloo;
  a no-op when the process was not started by ``torchrun`` (one process, world size 1).
- :func:`convert_batchnorm`: BatchNorm layers normalised with the statistics of the *global*
  batch (PyTorch's ``SyncBatchNorm`` on GPUs; :class:`CPUSyncBatchNorm`, an all-reduce of the
  per-rank mean and variance, on CPUs, where ``SyncBatchNorm`` does not run).
- :func:`wrap_ddp`: ``DistributedDataParallel`` (gradients averaged over the ranks); the bare
  network when the world size is 1.
- :func:`train_sampler` / :func:`eval_sampler`: MONAI's ``DistributedSampler``; the training one
  shuffles with a new permutation every epoch (the trainer calls ``set_epoch``), the evaluation
  one shards without padding.
- :class:`RowGatherer`: used by :class:`custom.nvum.MemoryUpdater` to collect the dataset
  indices and logits of every rank before each memory update.

With a global batch ``B`` split into ``B / world_size`` per rank, the sampler's rank ``r`` takes
positions ``r, r + W, r + 2W, ...`` of one permutation of the training set, so step ``k`` of all
ranks together holds exactly the images of step ``k`` of a one-process run with batch ``B`` and
the same permutation. With global BatchNorm statistics, the averaged gradient of the per-rank
mean losses is the gradient of the global mean loss, and the memory, gathered over ranks, gets
the same rows and logits: training is the one-process run, up to floating-point rounding.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from ..flags import as_bool
from ..nvum.gather import RowGatherer, all_gather_rows, first_unseen, world_size  # noqa: F401 (re-exported)


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the rank that logs, saves and reports."""
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_process_group(backend: str | None = None, timeout_minutes: float = 30.0) -> int:
    """Join the process group described by ``torchrun``'s environment; returns the world size.

    Does nothing (and returns 1) when ``WORLD_SIZE`` is not set, so that a config using the
    multi-process overlay also runs as one plain process.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        timeout_minutes: how long a collective may wait for the other ranks.
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if dist.is_initialized():
        return dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 1
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {missing} are not: start the processes with torchrun")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=float(timeout_minutes)))
    return dist.get_world_size()


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_process_first(stage: str) -> None:
    """Let rank 0 do a job first (e.g. generate or check the data) and the other ranks after it.

    Call ``main_process_first("start")`` before the job and ``main_process_first("end")`` after
    it on every rank: the other ranks wait at ``start`` until rank 0 reaches ``end``.
    """
    if stage not in ("start", "end"):
        raise ValueError(f"stage must be 'start' or 'end', got {stage!r}")
    if is_distributed() and (stage == "start") != is_main_process():
        dist.barrier()


def per_rank_batch_size(global_batch_size: int) -> int:
    """The batch of one rank: ``batch_size`` in the configs is the global batch, the same for any
    number of processes, so that the recipe (and the learning rate) does not change with them."""
    ws, batch = world_size(), int(global_batch_size)
    if batch % ws:
        raise ValueError(f"batch_size {batch} (the global batch) is not divisible by the {ws} processes")
    return batch // ws


def train_sampler(dataset, seed: int = 0):
    """MONAI's ``DistributedSampler`` over the training set: one permutation per epoch (seeded with
    ``seed + epoch``), padded with repeats of its first indices to a multiple of the world size."""
    from monai.data import DistributedSampler

    return DistributedSampler(
        dataset, even_divisible=True, num_replicas=world_size(), rank=rank(), shuffle=True, seed=int(seed)
    )


def eval_sampler(dataset):
    """MONAI's ``DistributedSampler`` for evaluation: contiguous order, no padding (ranks may hold
    one image more than others; :class:`custom.MultiLabelAUC` gathers uneven shards)."""
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=False, num_replicas=world_size(), rank=rank(), shuffle=False)


def wrap_ddp(network: nn.Module, device=None) -> nn.Module:
    """``DistributedDataParallel(network)`` in a process group of several processes; the network
    itself otherwise. The optimiser may hold the bare network's parameters (they are shared)."""
    if not is_distributed():
        return network
    device = torch.device(device) if device is not None else local_device()
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=ids)


def drop_on_workers(handlers: Iterable, types: Iterable) -> list:
    """``handlers`` without the instances of ``types`` (classes, or class names such as ``"StatsHandler"``) on
    ranks other than 0 (progress bars and printed lines that would repeat once per process)."""
    handlers = list(handlers)
    if is_main_process():
        return handlers
    types = list(types)
    names = {t for t in types if isinstance(t, str)}
    classes = tuple(t for t in types if isinstance(t, type))
    return [h for h in handlers if not (isinstance(h, classes) or type(h).__name__ in names)]


def main_process_flag(flag) -> bool:
    """A config flag that holds on rank 0 only (e.g. MLflow tracking)."""
    return as_bool(flag) and is_main_process()


# ------------------------------------------------------------------------------------------------
# BatchNorm over the global batch


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: d(sum_r x_r)/dx_r summed over
    the ranks' losses."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on CPUs.

    :class:`torch.nn.SyncBatchNorm` runs on GPUs only (and ``DistributedDataParallel`` refuses
    it on CPU modules). Here the per-rank count, mean and (biased) variance are summed over the
    ranks with a differentiable all-reduce and combined (Chan's parallel formula), so that the
    gradient also flows through the other ranks' statistics, as in ``SyncBatchNorm``. Without a
    process group of several processes, and in eval mode, it is plain BatchNorm. The state-dict
    keys are those of BatchNorm: checkpoints load into the plain network.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        ws, me = dist.get_world_size(), dist.get_rank()
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        count = input.numel() // channels
        var, mean = torch.var_mean(input, dim=dims, correction=0)
        row = torch.cat([input.new_full((1,), float(count)), mean, var])
        rows = torch.stack([row if r == me else torch.zeros_like(row) for r in range(ws)])
        rows = _SumOverRanks.apply(rows)  # every rank's row, on every rank
        counts, means, variances = rows[:, :1], rows[:, 1 : channels + 1], rows[:, channels + 1 :]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(total)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / max(n - 1.0, 1.0)), alpha=factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module, enabled: bool = True, device=None) -> nn.Module:
    """BatchNorm layers of ``module`` normalised with the statistics of the global batch.

    On a CUDA ``device`` this is :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`; on the CPU
    every BatchNorm layer becomes a :class:`CPUSyncBatchNorm` (weights, biases and running
    statistics kept). Returns the converted module (``module`` itself unless it is a BatchNorm
    layer); ``enabled=false`` returns ``module`` unchanged.
    """
    if not as_bool(enabled, "sync_batchnorm"):
        return module
    device = torch.device(device) if device is not None else local_device()
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cpu_sync(module)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out
