"""Logits of a network for data-list items: what the test report, the operating thresholds and the audit score."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from tqdm import tqdm


@torch.no_grad()
def predict(network: torch.nn.Module, items: list[dict], transform, device="cpu", batch_size: int = 256,
            num_workers: int = 0, desc: str = "predict", amp: bool = False) -> np.ndarray:
    """Logits of ``network`` for data-list items.

    Returns:
        (N, C) float32 array of logits, in item order.
    """
    device = torch.device(device)
    network.eval()
    out = []
    for batch in item_batches(items, transform, batch_size, num_workers, desc):
        with torch.autocast(device.type, enabled=amp):
            out.append(network(batch["image"].to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def item_batches(items: list[dict], transform, batch_size: int = 256, num_workers: int = 0, desc: str = "predict"):
    """The batches of data-list items under ``transform``, in item order, with a progress bar."""
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return tqdm(loader, desc=desc, leave=False, mininterval=2.0, disable=None)
