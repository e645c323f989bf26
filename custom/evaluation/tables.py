"""The one Markdown table writer of the project (test reports, benchmark and audit tables), and how a test table's
values and intervals are shown."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..labels import NO_FINDING


def markdown_table(header: Sequence, rows: Iterable[Sequence], align: str | Sequence[str] = "left", fmt=str) -> str:
    """A GitHub Markdown table (without the optional ``tabulate`` dependency).

    Args:
        header: column names.
        rows: one sequence of cells per row.
        align: ``"left"`` (every column), ``"right"``, ``"first-left"`` (first column left, the
            others right: label column, then numbers), or one of ``"left"``/``"right"`` per column.
        fmt: turns a cell into text (default ``str``).

    Returns:
        the table, one line per row, without a trailing newline.
    """
    header = [str(h) for h in header]
    if isinstance(align, str):
        align = {"left": ["left"] * len(header), "right": ["right"] * len(header),
                 "first-left": ["left"] + ["right"] * (len(header) - 1)}[align]
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns")
    rule = "|" + "|".join("---" if a == "left" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_value(v) -> str:
    """A table value with 4 decimals, ``n/a`` when undefined."""
    return "n/a" if v is None or np.isnan(v) else f"{v:.4f}"


def interval_text(table, row) -> str:
    """`` [low, high]`` of a table row, or nothing when the table has no intervals or the row's is undefined."""
    return f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if "ci_low" in table and not np.isnan(row["ci_low"]) else ""


def frame_markdown(df, **kwargs) -> str:
    """:func:`markdown_table` of a DataFrame's columns and rows."""
    return markdown_table(df.columns, df.itertuples(index=False), **kwargs)


def shown_auc_table(table):
    """A test table as printed: AUC with its interval as text, the diseases, the mean, then No Finding."""
    import pandas as pd

    out = pd.DataFrame({"class": table["class"], "positives": table["positives"],
                        "auc": table["auc"].map(format_value)})
    if "ci_low" in table:
        out["95% CI"] = [("n/a" if np.isnan(lo) else f"{lo:.4f} - {hi:.4f}") for lo,
                         hi in zip(table["ci_low"], table["ci_high"])]
    for column in ("threshold", "sensitivity", "specificity", "ece"):
        if column in table:
            out[column] = table[column].map(format_value)
    apart = table["class"] == NO_FINDING
    return pd.concat([out[~apart], out[apart]], ignore_index=True)


def auc_markdown_report(title: str, shown) -> str:
    """The Markdown page of a :func:`shown_auc_table`: the diseases and the mean, then No Finding apart."""
    apart = shown["class"] == NO_FINDING
    text = f"# {title}\n\n{frame_markdown(shown[~apart])}\n"
    if apart.any():
        text += f"\nReported apart (not in the mean over diseases):\n\n{frame_markdown(shown[apart])}\n"
    return text
