"""Test-set evaluation: per-class AUC tables on the clean test splits, printed, saved and tracked."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset
from tqdm import tqdm

from .data import DataList
from .labels import NO_FINDING, disease_indices
from .metrics import mean_auc, per_class_auc
from .networks import load_weights
from .utils import as_bool


@torch.no_grad()
def predict(network: torch.nn.Module, items: list[dict], transform, device="cpu", batch_size: int = 256, num_workers: int = 0, desc: str = "predict", amp: bool = False) -> np.ndarray:
    """Logits of ``network`` for data-list items.

    Returns:
        (N, C) float32 array of logits, in item order.
    """
    device = torch.device(device)
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    network.eval()
    out = []
    for batch in tqdm(loader, desc=desc, leave=False, mininterval=2.0, disable=None):
        with torch.autocast(device.type, enabled=amp):
            out.append(network(batch["image"].to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def auc_table(aucs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Per-class AUC table with positives counts and a final row ``Mean (diseases)``."""
    rows = [{"class": c, "positives": int(labels[:, i].sum()), "auc": aucs[i]} for i, c in enumerate(classes)]
    rows.append({"class": "Mean (diseases)", "positives": int(labels[:, disease_indices(classes)].any(axis=1).sum()), "auc": mean_auc(aucs, disease_indices(classes))})
    return pd.DataFrame(rows)


class TestReport:
    """Evaluates a checkpoint on every clean test split of a data list.

    For each split it prints a per-class AUC table (No Finding listed, but left out of the mean
    over diseases as in the paper), writes ``<output_dir>/test_<split>.csv`` and ``.md``, and
    logs both files and the mean AUC to the MLflow run of ``tracker`` when there is one.

    Args:
        network: the network to evaluate (weights are loaded into it from ``checkpoint``).
        datalist: the :class:`~custom.data.DataList`.
        transform: the (deterministic) preprocessing of images.
        output_dir: where the tables are written.
        checkpoint: weights file to load first (``None`` evaluates the network as it is).
        splits: splits to evaluate; default: every test split of the data list.
        device, batch_size, num_workers, amp: inference settings.
        tracker: optional :class:`~custom.handlers.MLflowTracker`.
        end_run: end the tracker's run afterwards (false when a later step logs to the same run).
    """

    def __init__(self, network, datalist: DataList, transform, output_dir, checkpoint=None, splits=None, device="cpu", batch_size: int = 256, num_workers: int = 0, amp: bool = False, tracker=None, end_run: bool = True):
        self.network, self.datalist, self.transform = network, datalist, transform
        self.output_dir, self.checkpoint = Path(output_dir), checkpoint
        self.splits = list(splits) if splits else datalist.test_splits
        self.device, self.batch_size, self.num_workers, self.amp = device, batch_size, num_workers, amp
        self.tracker, self.end_run = tracker, as_bool(end_run, "end_run")
        self.results: dict[str, pd.DataFrame] = {}

    def run(self) -> dict[str, pd.DataFrame]:
        if not self.splits:
            raise ValueError(f"data list {self.datalist.path} has no test split to evaluate")
        if self.checkpoint:
            load_weights(self.network, self.checkpoint)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        classes = self.datalist.classes
        for split in self.splits:
            labels = self.datalist.labels(split)
            logits = predict(self.network, self.datalist.items(split), self.transform, self.device, self.batch_size, self.num_workers, desc=f"test {split}", amp=self.amp)
            table = auc_table(per_class_auc(logits, labels), labels, classes)
            self.results[split] = table
            self._report(split, table, len(labels))
        if self.tracker is not None and self.end_run:
            self.tracker.finish()
        return self.results

    def _report(self, split: str, table: pd.DataFrame, num_images: int) -> None:
        mean = float(table["auc"].iloc[-1])
        shown = table.assign(auc=table["auc"].map(lambda v: "n/a" if np.isnan(v) else f"{v:.4f}"))
        title = f"Test AUC on '{split}' ({num_images} images; mean over diseases, {NO_FINDING} excluded)"
        print(f"\n{title}\n{shown.to_string(index=False)}\n", flush=True)
        csv, md = self.output_dir / f"test_{split}.csv", self.output_dir / f"test_{split}.md"
        table.to_csv(csv, index=False)
        md.write_text(f"# {title}\n\n{_markdown(shown)}\n")
        if self.tracker is not None:
            self.tracker.log_values({f"test_{split}_mean_auc": mean})
            for path in (csv, md):
                self.tracker.log_file(path, "test")


def _markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (without the optional ``tabulate`` dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
