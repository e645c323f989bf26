"""The noise benchmark's tables: AUC points per run, mean ± std over seeds, paired gaps to BCE, Markdown."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...evaluation.tables import markdown_table
from .methods import ABLATION_ROWS, DEFAULT_BETA, Run

SPLITS = ("test", "test_shifted")


def run_metrics(record: dict) -> dict:
    """AUC points (x100) of one run: selected (noisy-validation best) and last epoch per split,
    the peak over epochs and ``drop`` = peak - last (curve runs only), and the selected epoch."""
    out = {"selected_epoch": record["best"]["epoch"], "val_selected": 100 * record["best"]["val"], "val_last": 100 * record["last"]["val"]}
    for split in SPLITS:
        out[f"selected_{split}"] = 100 * record["best"]["test"][split]
        out[f"last_{split}"] = 100 * record["last"]["test"][split]
        curve = [row["test"][split] for row in record["history"] if "test" in row]
        if len(curve) == len(record["history"]):
            out[f"peak_{split}"] = 100 * max(curve)
            out[f"drop_{split}"] = out[f"peak_{split}"] - out[f"last_{split}"]
    return out


def _mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _pm(values, digits: int = 1) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _groups(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    """Runs grouped by everything but the seed, in first-seen order."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault((r.noise, r.regime, r.method, r.beta), []).append(r)
    return out


def results_table(runs: Sequence[Run], records: dict[str, dict]) -> list[dict]:
    """One row per (noise, regime, method): mean ± std over seeds of the AUC points."""
    rows = []
    for (noise, regime, method, beta), group in _groups(runs).items():
        metrics = [run_metrics(records[r.name]) for r in group]
        row = {"noise": noise, "regime": regime, "method": method, "seeds": len(group)}
        for key in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted", "drop_test", "drop_test_shifted", "selected_epoch", "val_selected"):
            row[key] = [m.get(key, float("nan")) for m in metrics]
        rows.append(row)
    return rows


def main_markdown(rows: list[dict]) -> str:
    header = ["noise", "method", "seeds", "selected: test", "selected: shifted", "last: test", "last: shifted", "drop: test", "drop: shifted", "selected epoch"]
    body = [
        [r["noise"], r["method"], r["seeds"], _pm(r["selected_test"]), _pm(r["selected_test_shifted"]), _pm(r["last_test"]), _pm(r["last_test_shifted"]), _pm(r["drop_test"]), _pm(r["drop_test_shifted"]), _pm(r["selected_epoch"], 0)]
        for r in rows
    ]
    return markdown_table(header, body, align="first-left")


def ablation_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    by_method = _groups(runs)
    body = []
    for label, method in ABLATION_ROWS.items():
        group = next((g for (n, rg, m, b), g in by_method.items() if m == method), None)
        if not group:
            continue
        metrics = [run_metrics(records[r.name]) for r in group]
        body.append([label, f"`{method}`", len(group)] + [_pm([m[k] for m in metrics]) for k in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")])
    return markdown_table(["row", "method", "seeds", "selected: test", "selected: shifted", "last: test", "last: shifted"], body, align="first-left")


def beta_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    body = []
    for (n, rg, m, beta), group in sorted(_groups(runs).items(), key=lambda kv: kv[0][3] if kv[0][3] is not None else DEFAULT_BETA):
        metrics = [run_metrics(records[r.name]) for r in group]
        b = beta if beta is not None else DEFAULT_BETA
        body.append([f"{b:g}", len(group)] + [_pm([x[k] for x in metrics]) for k in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")])
    return markdown_table(["beta", "seeds", "selected: test", "selected: shifted", "last: test", "last: shifted"], body, align="first-left")


def gaps_markdown(runs: Sequence[Run], records: dict[str, dict], baseline: str = "bce") -> str:
    """Difference of each method to ``baseline`` (AUC points, mean ± std over the paired seeds)."""
    groups = _groups(runs)
    base = next((g for (n, rg, m, b), g in groups.items() if m == baseline), None)
    if base is None:
        return ""
    base_metrics = {r.seed: run_metrics(records[r.name]) for r in base}
    body = []
    for (n, rg, method, b), group in groups.items():
        if method == baseline:
            continue
        metrics = {r.seed: run_metrics(records[r.name]) for r in group}
        seeds = sorted(set(metrics) & set(base_metrics))
        cells = [_pm([metrics[s][k] - base_metrics[s][k] for s in seeds]) for k in ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")]
        body.append([method, len(seeds)] + cells)
    return markdown_table(["method", "paired seeds", f"selected: test - {baseline}", "selected: shifted", "last: test", "last: shifted"], body, align="first-left")
