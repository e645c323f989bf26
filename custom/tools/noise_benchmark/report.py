"""The noise benchmark's outputs: ``results.md``, ``results.csv`` and the AUC-per-epoch figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ..synthetic import noise_slug
from .methods import Regime, Run, unique_runs
from .tables import _groups, ablation_markdown, beta_markdown, gaps_markdown, main_markdown, results_table, run_metrics


def curve_figure(runs: Sequence[Run], records: dict[str, dict], path, title: str = "") -> Path:
    """AUC per epoch of every method (mean over seeds, band: min-max): noisy validation, clean test, clean shifted test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("val", "noisy validation"), ("test", "clean test (in-distribution)"), ("test_shifted", "clean test (shifted)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=90, sharex=True)
    colours = plt.get_cmap("tab10").colors
    for i, ((noise, regime, method, beta), group) in enumerate(_groups(runs).items()):
        for ax, (key, name) in zip(axes, panels):
            curves = np.array([[100 * (row[key] if key == "val" else row["test"][key]) for row in records[r.name]["history"]] for r in group])
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, curves.mean(axis=0), color=colours[i % 10], lw=1.5, label=method)
            if len(group) > 1:
                ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=colours[i % 10], alpha=0.15, lw=0)
            ax.set_title(name, fontsize=10)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean AUC over 13 diseases (points)")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _regime_text(regimes: dict[str, Regime], names) -> str:
    parts = []
    for name in names:
        r = regimes[name]
        parts.append(f"`{name}`: {r.num_training} training / {r.num_validation} validation images (noisy), {r.num_test} + {r.num_test} clean test images (in-distribution + shifted), {r.max_epochs} epochs")
    return "; ".join(parts)


def write_outputs(plan: dict[str, list[Run]], records: dict[str, dict], output, regimes: dict[str, Regime], command: str = "", wall_seconds: float | None = None) -> Path:
    """Write ``results.md``, ``results.csv`` (one row per run) and the curve figures; returns ``results.md``."""
    import pandas as pd

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    used = unique_runs(plan)
    rows = []
    for run in used:
        rec = records[run.name]
        rows.append({**dataclasses.asdict(run), "name": run.name, **run_metrics(rec), "seconds": rec["seconds"], "cpu_seconds": rec.get("cpu_seconds")})
    pd.DataFrame(rows).to_csv(output / "results.csv", index=False)

    text = ["# Synthetic noisy-label benchmark", ""]
    if command:
        text += ["Command:", "", f"    {command}", ""]
    regimes_used = sorted({r.regime for r in used}, key=list(regimes).index)
    text += [
        f"Regimes: {_regime_text(regimes, regimes_used)}.",
        "AUC is the mean over the 13 diseases (No Finding excluded), in points (x100), mean ± std over seeds (one value: one seed).",
        "`selected`: the epoch with the best mean AUC on the *noisy* validation split (the checkpoint the bundle keeps); `last`: the final epoch;",
        "`drop`: best clean-test AUC over the epochs minus the last epoch's (the memorisation signature; curve runs only).",
        f"{len(used)} runs; {sum(records[r.name].get('cpu_seconds', float('nan')) for r in used) / 60:.1f} min of CPU time (one thread per run), {sum(records[r.name]['seconds'] for r in used) / 60:.1f} min of run wall time"
        + (f", {wall_seconds / 60:.1f} min wall for the command" if wall_seconds else "") + ".",
        "",
    ]
    figures = []
    for part, title in (("main", "Main table"), ("stress", "Other noise models (stress rows)"), ("short", "Short regime")):
        runs = plan.get(part) or []
        if not runs:
            continue
        regime = runs[0].regime
        text += [f"## {title} ({regime} regime)", "", main_markdown(results_table(runs, records)), ""]
        if part in ("main", "short"):
            gaps = gaps_markdown(runs, records)
            if gaps:
                text += ["Difference to plain BCE, paired by seed (points):", "", gaps, ""]
        for (noise, reg), group in _by_noise_regime(runs).items():
            if all(r.curve for r in group):
                name = f"curve_{noise_slug(noise)}_{reg}.png"
                curve_figure(group, records, output / name, title=f"{noise} noise, {reg} regime")
                figures.append(name)
                text += [f"![AUC per epoch, {noise} noise, {reg} regime]({name})", ""]
    if plan.get("ablation"):
        text += ["## Ablation: where the class prior goes (paper, Fig. 2 left)", "", ablation_markdown(plan["ablation"], records), ""]
    if plan.get("beta"):
        text += ["## Memory momentum beta (paper, Fig. 2 right; `nvum_epoch`)", "", beta_markdown(plan["beta"], records), ""]
    path = output / "results.md"
    path.write_text("\n".join(text))
    return path


def _by_noise_regime(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault((r.noise, r.regime), []).append(r)
    return out
