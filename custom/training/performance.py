"""Speed settings of the training and evaluation engines: channels-last memory layout.

Mixed precision is the engines' own ``amp`` flag (``torch.autocast`` around the forward pass; the
loss, the memory and the metrics are computed in float32 in any case). Channels-last stores
image batches and convolution weights as N x H x W x C, which tensor-core convolution kernels
prefer on GPUs. Both are config ids of ``train.json`` (``amp``, ``channels_last``), on by default
when CUDA is available and off on CPUs, where neither helps.
"""

from __future__ import annotations

import torch
from monai.engines.utils import PrepareBatch
from monai.utils.enums import CommonKeys as Keys

from ..flags import as_bool


def memory_format(channels_last) -> torch.memory_format:
    """``torch.channels_last`` when the flag is set, else ``torch.contiguous_format``."""
    return torch.channels_last if as_bool(channels_last, "channels_last") else torch.contiguous_format


class PrepareImageBatch(PrepareBatch):
    """Moves a batch's ``image`` and ``label`` to the device, the image in the given memory format.

    A drop-in for MONAI's default ``prepare_batch`` of the trainer and evaluator (which would try
    to give the (B, C) label a 4-D memory format too).

    Args:
        channels_last: store the (B, 3, H, W) image batch channels-last.
    """

    def __init__(self, channels_last=False):
        self.memory_format = memory_format(channels_last)

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata[Keys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
        if image.dim() == 4:
            image = image.contiguous(memory_format=self.memory_format)
        label = batchdata.get(Keys.LABEL)
        if label is not None:
            label = label.to(device=device, non_blocking=non_blocking, **kwargs)
        return image, label
