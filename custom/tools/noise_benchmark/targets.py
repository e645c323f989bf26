"""The benchmark's targets, each stated as met or missed with the measured figure."""

from __future__ import annotations

import math
from typing import Sequence

from ...evaluation.tables import markdown_table
from .methods import Run
from .tables import group_runs, mean_interval, paired_gaps, run_metrics

#: the method the targets are about, and the baselines it must beat.
NVUM = "nvum"
BASELINES = ("logit_adjusted_bce", "bce_ema")


def _mean(values) -> float:
    return mean_interval(values)[0]


def _values(runs: Sequence[Run], records: dict, method: str, key: str) -> list[float]:
    group = next((g for (n, rg, m, b), g in group_runs(runs).items() if m == method and b is None), [])
    return [run_metrics(records[r.name]).get(key, float("nan")) for r in group]


def evaluate_targets(plan: dict, records: dict) -> list[dict]:
    """One row per target: ``target``, ``measured`` (text), ``met`` (bool, or ``None`` when not measured)."""
    main, clean = plan.get("main") or [], plan.get("clean") or []
    rows = []

    def add(target, measured, met):
        rows.append({"target": target, "measured": measured, "met": met})

    ceiling = _values(clean, records, "bce", "selected_test")
    if ceiling:
        m = _mean(ceiling)
        add(
            "clean-label BCE reaches at least 90 mean clean-test AUC",
            f"{m:.1f} (selected epoch, {len(ceiling)} seed{'s' if len(ceiling) > 1 else ''}; last epoch "
            f"{_mean(_values(clean, records, 'bce', 'last_test')):.1f})",
            m >= 90,
        )
    for split, name in (("test", "in-distribution"), ("test_shifted", "shifted")):
        drop = _values(main, records, "bce", f"drop_{split}")
        if drop:
            m = _mean(drop)
            add(f"BCE's best-to-last drop at least 3 points ({name})", f"{m:.1f}", m >= 3 if split == "test" else None)
    gaps = paired_gaps(main, records, "bce")
    if NVUM in gaps:
        for key, need, text in (
            ("selected_test", 2, "selected, in-distribution"),
            ("selected_test_shifted", 2, "selected, shifted"),
            ("last_test", 3, "last epoch, in-distribution"),
            ("last_test_shifted", 3, "last epoch, shifted"),
        ):
            mean, low, high = mean_interval(gaps[NVUM][key])
            seeds = len(gaps[NVUM]["seeds"])
            measured = (
                f"{mean:+.1f} [{low:+.1f}, {high:+.1f}] over {seeds} paired seeds"
                if not math.isnan(low)
                else f"{mean:+.1f}"
            )
            add(f"NVUM at least {need} points above BCE ({text}), 95% interval above 0", measured,
                bool(mean >= need and not math.isnan(low) and low > 0))
    for split, name in (("test", "in-distribution"), ("test_shifted", "shifted")):
        drop = _values(main, records, NVUM, f"drop_{split}")
        if drop:
            m = _mean(drop)
            add(f"NVUM's own drop at most 1 point ({name})", f"{m:.1f}", m <= 1)
    nvum_fit, bce_fit = _values(main, records, NVUM, "fitted_last"), _values(main, records, "bce", "fitted_last")
    if nvum_fit and bce_fit:
        a, b = _mean(nvum_fit), _mean(bce_fit)
        add("at the last epoch NVUM has fitted at most half as many wrong training labels as BCE",
            f"NVUM {a:.0f}% of the wrong labels, BCE {b:.0f}% (ratio {a / b:.2f})", a <= 0.5 * b)
    for baseline in BASELINES:
        mine, theirs = _values(main, records, NVUM, "last_test"), _values(main, records, baseline, "last_test")
        mine_sel, theirs_sel = (
            _values(main, records, NVUM, "selected_test"),
            _values(main, records, baseline, "selected_test"),
        )
        if mine and theirs:
            d_sel, d_last = _mean(mine_sel) - _mean(theirs_sel), _mean(mine) - _mean(theirs)
            add(f"NVUM ahead of `{baseline}` (in-distribution)", f"{d_sel:+.1f} selected, {d_last:+.1f} last epoch",
                d_sel > 0 and d_last > 0)
    return rows


def targets_markdown(rows: list[dict]) -> str:
    verdict = {True: "**met**", False: "**missed**", None: "(reported)"}
    return markdown_table(
        ["target", "measured", "verdict"], [[r["target"], r["measured"], verdict[r["met"]]] for r in rows]
    )
