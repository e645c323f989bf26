"""The evaluation's figures: ROC curves and reliability diagrams of a test set (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..labels import NO_FINDING
from .metrics import calibration_bins
from .tables import format_value, interval_text


def save_figure(fig, path, dpi=None) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (PNG; its folder made when missing; ``dpi``: the
    figure's own by default) and close it; returns the path. Every figure of the project is saved by it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi if dpi is not None else "figure")
    plt.close(fig)
    return path


def roc_figure(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], table: pd.DataFrame, path,
               title: str = "") -> Path:
    """One PNG with the ROC curve of every class whose AUC is defined (matplotlib, Agg backend).

    The legend gives each class's AUC and bootstrap interval; No Finding is drawn dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    colours = plt.get_cmap("tab20").colors
    for i, cls in enumerate(classes):
        column = labels[:, i]
        if not 0 < column.sum() < len(column):
            continue
        fpr, tpr, _ = roc_curve(column, scores[:, i])
        row = table.iloc[i]
        ci = interval_text(table, row)
        ax.plot(fpr, tpr, lw=1.2, color=colours[i % len(colours)], ls="--" if cls == NO_FINDING else "-",
                label=f"{cls} {row['auc']:.3f}{ci}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(fontsize=6.5, loc="lower right", title="class, AUC [95% CI]", title_fontsize=7)
    return save_figure(fig, path)


def reliability_figure(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], table: pd.DataFrame, path,
                       title: str = "", num_bins: int = 10) -> Path:
    """One PNG of reliability diagrams: a small panel per class (fraction of positives against the mean
    probability in ``num_bins`` equal-width bins, marker area by the bin's images, the diagonal for
    perfect calibration), each titled with its ECE from ``table``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(classes), 1)
    cols = min(5, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.5), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(classes):
            ax.axis("off")
            continue
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        if len(labels):
            bins = calibration_bins(probs[:, i], labels[:, i], num_bins)
            filled = bins["count"] > 0
            sizes = 8 + 120 * bins["count"][filled] / max(bins["count"].sum(), 1)
            ax.plot(bins["confidence"][filled], bins["frequency"][filled], color="tab:blue", lw=1)
            ax.scatter(bins["confidence"][filled], bins["frequency"][filled], s=sizes, color="tab:blue", zorder=3)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.set_title(f"{classes[i]}\nECE {format_value(table.iloc[i]['ece'])}", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.supxlabel("mean predicted probability (10 equal-width bins)", fontsize=8)
    fig.supylabel("fraction positive", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
