"""Speed settings of the training and evaluation engines: channels-last memory layout.

Mixed precision is the engines' own ``amp`` flag (``torch.autocast`` around the forward pass; the
loss, the memory and the metrics are computed in float32 in any case). Channels-last stores
image batches and convolution weights as N x H x W x C, which tensor-core convolution kernels
prefer on GPUs. Both are config ids of ``train.json`` (``amp``, ``channels_last``), on by default
when CUDA is available and off on CPUs, where neither helps.
"""

from __future__ import annotations

import torch

from ..flags import as_bool


def memory_format(channels_last) -> torch.memory_format:
    """``torch.channels_last`` when the flag is set, else ``torch.contiguous_format``."""
    return torch.channels_last if as_bool(channels_last, "channels_last") else torch.contiguous_format
