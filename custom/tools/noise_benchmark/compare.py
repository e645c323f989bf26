"""Does a rerun of the noise benchmark reproduce its numbers? (``python -m custom.cli noise_benchmark_compare``)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tables import ROW_KEYS

#: the columns of ``results.csv`` that a rerun must reproduce (AUC points, and the wrong labels fitted in %).
COMPARED = tuple(k for k in ROW_KEYS if k != "selected_epoch")


def compare_results(first, second, tolerance: float = 0.5) -> float:
    """Largest difference (AUC points) between two benchmark outputs of the same runs.

    Args:
        first, second: output folders (or their ``results.csv``) of two runs of the command.
        tolerance: allowed difference in AUC points.

    Returns:
        the largest absolute difference over every run and every column of :data:`COMPARED`.

    Raises:
        ValueError: the two outputs hold different runs, or a difference exceeds ``tolerance``.
    """
    import pandas as pd

    tables = []
    for where in (first, second):
        path = Path(where)
        path = path / "results.csv" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"no benchmark results at {path}: run `python -m custom.cli noise_benchmark --output "
                f"{path.parent}` first"
            )
        tables.append(pd.read_csv(path).set_index("name"))
    a, b = tables
    if set(a.index) != set(b.index):
        raise ValueError(
            f"{first} and {second} hold different runs: only in the first "
            f"{sorted(set(a.index) - set(b.index))[:5]}, only in the second {sorted(set(b.index) - set(a.index))[:5]}"
        )
    b = b.loc[a.index]
    columns = [c for c in COMPARED if c in a.columns]
    diff = (a[columns] - b[columns]).abs()
    worst = float(np.nanmax(diff.to_numpy())) if diff.size else 0.0
    both_nan = a[columns].isna() == b[columns].isna()
    if not both_nan.all().all():
        raise ValueError(
            "a value is missing in one output only: "
            + ", ".join(f"{r}/{c}" for r, c in zip(*np.where(~both_nan.to_numpy())))
        )
    print(f"{len(a)} runs, {len(columns)} AUC columns: largest difference {worst:.4f} points (tolerance {tolerance})")
    for column in columns:
        print(
            f"  {column:24s} max |diff| {np.nanmax(diff[column].to_numpy()) if diff[column].notna().any() else 0.0:.4f}"
        )
    if worst > tolerance:
        run, column = diff.stack().idxmax()
        raise ValueError(f"run {run}: {column} differs by {worst:.3f} AUC points (> {tolerance})")
    return worst
