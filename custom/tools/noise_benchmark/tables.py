"""The noise benchmark's tables: AUC points per run, mean ± std over seeds, paired gaps to BCE with
95% intervals, the targets, Markdown."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...data.synthetic import CLASSES
from ...evaluation.tables import markdown_table
from ...labels import disease_indices
from .methods import ABLATION_ROWS, DEFAULT_BETA, Run

SPLITS = ("test", "test_shifted")
#: the columns of a main-table row (AUC points, except the epochs and the fitted shares in %).
ROW_KEYS = (
    "selected_test",
    "selected_test_shifted",
    "last_test",
    "last_test_shifted",
    "drop_test",
    "drop_test_shifted",
    "selected_epoch",
    "val_selected",
    "fitted_last",
)
#: the four AUC figures a method is compared on.
COMPARED_KEYS = ("selected_test", "selected_test_shifted", "last_test", "last_test_shifted")


def kept_diseases(record: dict, classes: Sequence[str] = CLASSES) -> dict[str, frozenset]:
    """Per test split, the diseases a run's mean AUC averages over (No Finding and its split's
    ``left_out`` diseases excluded: fewer positives than the minimum in that run's split)."""
    diseases = [classes[c] for c in disease_indices(classes)]
    left_out = record.get("left_out") or {}
    return {split: frozenset(d for d in diseases if d not in (left_out.get(split) or ())) for split in SPLITS}


def common_diseases(records: Sequence[dict]) -> dict[str, frozenset]:
    """Per test split, the diseases that every one of ``records`` keeps (:func:`kept_diseases`): what a
    mean pooled over runs of several draws averages over, so that every run enters with the same diseases."""
    kept = [kept_diseases(r) for r in records]
    return {split: frozenset.intersection(*(k[split] for k in kept)) if kept else frozenset() for split in SPLITS}


def _mean_over(record: dict, when: str, split: str, diseases: frozenset, classes: Sequence[str] = CLASSES) -> float:
    """The mean AUC of ``record[when]`` on ``split`` over ``diseases`` (its per-class AUCs)."""
    per_class = (record[when].get("test_classes") or {}).get(split)
    if per_class is None:
        raise ValueError(f"run {record.get('name')!r}: no per-class AUCs ({when}, {split}) to average over {diseases}")
    values = [per_class[classes.index(d)] for d in classes if d in diseases]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def run_metrics(record: dict, diseases: dict[str, frozenset] | None = None) -> dict:
    """The figures of one run: AUC points (x100) at the selected (noisy-validation best) and last
    epoch per split (whole test splits), ``drop`` = selected - last (whole test splits), the
    selected epoch, and the share of wrong training labels fitted (%, :mod:`.fitting`) at the
    selected and last epochs (``fitted_*``; with its false-positive and missed-positive parts).

    The mean AUC of a split is over the diseases the run keeps (:func:`kept_diseases`), or over
    ``diseases`` (split -> names, e.g. :func:`common_diseases` of pooled runs) where it names others,
    recomputed from the recorded per-class AUCs.

    Why ``drop`` is selected minus last on the whole splits: the targets are judged at the selected
    epoch (the checkpoint the bundle ships), so the drop is what training on to the last epoch costs
    from there; both figures are measured on every image of the split. The former drop, the best of
    the curve's points (every ``eval_every`` epochs on the first ``curve_size`` test images) minus
    the last one, was the maximum of noisy values, biased upward, and read the clean test labels to
    find its peak. A negative drop: the last epoch is better than the selected one."""
    out = {
        "selected_epoch": record["best"]["epoch"],
        "val_selected": 100 * record["best"]["val"],
        "val_last": 100 * record["last"]["val"],
    }
    own = kept_diseases(record)
    for split in SPLITS:
        for when, key in (("best", "selected"), ("last", "last")):
            if diseases is None or diseases[split] == own[split]:
                out[f"{key}_{split}"] = 100 * record[when]["test"][split]
            else:
                out[f"{key}_{split}"] = 100 * _mean_over(record, when, split, diseases[split])
        out[f"drop_{split}"] = out[f"selected_{split}"] - out[f"last_{split}"]
    for when in ("selected", "last"):
        fitted = record["best" if when == "selected" else "last"].get("fitted")
        if fitted:
            for part in ("all", "false_positive", "missed"):
                key = f"fitted_{when}" if part == "all" else f"fitted_{part}_{when}"
                out[key] = 100 * fitted[part] if fitted[part] is not None else float("nan")
    return out


def scope_metrics(runs: Sequence[Run], records: dict[str, dict]) -> dict[str, dict]:
    """:func:`run_metrics` of every run, each mean over the diseases that every run of ``runs`` keeps
    (:func:`common_diseases`): one draw's runs keep the same diseases (their own means); runs pooled
    over draws are averaged over the same diseases."""
    common = common_diseases([records[r.name] for r in runs])
    return {r.name: run_metrics(records[r.name], common) for r in runs}


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _mean_std(values) -> tuple[float, float]:
    values = _clean(values)
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of the mean: ``(mean, low, high)`` (NaN bounds for one value)."""
    from scipy import stats

    values = _clean(values)
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def _pm(values, digits: int = 1) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def ci_text(values, digits: int = 1) -> str:
    """``mean [low, high]`` of :func:`mean_interval` in signed points (``-`` without values; the mean alone for one)."""
    mean, low, high = mean_interval(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:+.{digits}f}" if math.isnan(low) else f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def group_runs(runs: Sequence[Run], by_draw: bool = True) -> dict[tuple, list[Run]]:
    """Runs grouped by everything but the seed, in first-seen order: ``(noise, regime, method, beta,
    data_seed)`` keys (``data_seed`` None when ``by_draw`` is off: every draw in one group)."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault((r.noise, r.regime, r.method, r.beta, r.data_seed if by_draw else None), []).append(r)
    return out


def method_runs(runs: Sequence[Run], method: str, by_draw: bool = False) -> list[Run]:
    """The runs of ``method`` at the default memory momentum (the first group of :func:`group_runs`)."""
    return next((g for (n, rg, m, b, d), g in group_runs(runs, by_draw).items() if m == method and b is None), [])


def draws(runs: Sequence[Run]) -> list[int]:
    """The draws of the data (``data_seed``) the runs use, in first-seen order."""
    return list(dict.fromkeys(r.data_seed for r in runs))


def of_draw(runs: Sequence[Run], data_seed: int) -> list[Run]:
    """The runs on one draw of the data."""
    return [r for r in runs if r.data_seed == data_seed]


def in_method_order(rows: list, method_of) -> list:
    """``rows`` (stable) sorted so that each method's rows are together, methods in first-seen order."""
    order = {m: i for i, m in enumerate(dict.fromkeys(method_of(row) for row in rows))}
    return sorted(rows, key=lambda row: order[method_of(row)])


def results_table(runs: Sequence[Run], records: dict[str, dict], by_draw: bool = True) -> list[dict]:
    """One row per (noise, regime, method, draw): the values over seeds of :data:`ROW_KEYS`
    (``by_draw`` off: one row per method, every draw's runs together; ``draw`` is then None)."""
    if by_draw:  # each draw's runs over that draw's diseases
        scoped = {name: m for d in draws(runs) for name, m in scope_metrics(of_draw(runs, d), records).items()}
    else:  # every draw's runs over the diseases that every draw keeps
        scoped = scope_metrics(runs, records)
    rows = []
    for (noise, regime, method, beta, draw), group in group_runs(runs, by_draw).items():
        metrics = [scoped[r.name] for r in group]
        row = {"noise": noise, "regime": regime, "method": method, "draw": draw, "seeds": len(group)}
        for key in ROW_KEYS:
            row[key] = [m.get(key, float("nan")) for m in metrics]
        rows.append(row)
    return rows


#: the column headers of :data:`COMPARED_KEYS`.
COMPARED_HEADERS = ("selected: test", "selected: shifted", "last: test", "last: shifted")


def main_markdown(rows: list[dict], show_draw: bool = False) -> str:
    """Rows of :func:`results_table` as Markdown (``show_draw``: a column with each row's draw)."""
    header = ["noise", *(["draw"] if show_draw else []), "method", "seeds", *COMPARED_HEADERS, "drop: test",
              "drop: shifted", "selected epoch", "wrong labels fitted, last (%)"]
    body = [[r["noise"], *([_draw_text(r["draw"])] if show_draw else []), f"`{r['method']}`", r["seeds"],
             *(_pm(r[k]) for k in ROW_KEYS[:6]), _pm(r["selected_epoch"], 0), _pm(r["fitted_last"], 0)]
            for r in rows]
    return markdown_table(header, body, align="first-left")


def _draw_text(draw) -> str:
    return "all" if draw is None else str(draw)


def paired_gaps(runs: Sequence[Run], records: dict[str, dict], baseline: str = "bce", keys=COMPARED_KEYS) -> dict:
    """Per method, the differences to ``baseline`` on the (draw, seed) pairs both ran:
    ``{method: {key: [diff per pair], "seeds": [(data_seed, seed), ...]}}``. Every draw among
    ``runs`` is pooled, over the diseases that every draw keeps (:func:`scope_metrics`): pass one
    draw's runs for that draw's differences."""
    base = method_runs(runs, baseline)
    if not base:
        return {}
    scoped = scope_metrics(runs, records)
    base_metrics = {(r.data_seed, r.seed): scoped[r.name] for r in base}
    out = {}
    for (n, rg, method, b, d), group in group_runs(runs, by_draw=False).items():
        if method == baseline or b is not None:
            continue
        metrics = {(r.data_seed, r.seed): scoped[r.name] for r in group}
        pairs = sorted(set(metrics) & set(base_metrics))
        out[method] = {
            k: [metrics[p].get(k, float("nan")) - base_metrics[p].get(k, float("nan")) for p in pairs] for k in keys
        }
        out[method]["seeds"] = pairs
    return out


def gaps_markdown(runs: Sequence[Run], records: dict[str, dict], baseline: str = "bce") -> str:
    """Difference of each method to ``baseline`` (AUC points), paired by draw and seed: mean [95%
    t-interval over the pairs], one row per draw and, with several draws, one over every pair."""
    found = draws(runs)
    scopes = [(str(d), of_draw(runs, d)) for d in found]
    if len(found) > 1:
        scopes.append(("all", list(runs)))
    body = []
    for label, scoped in scopes:
        gaps = paired_gaps(scoped, records, baseline)
        body += [[f"`{m}`", label, len(g["seeds"])] + [ci_text(g[k]) for k in COMPARED_KEYS] for m, g in gaps.items()]
    if not body:
        return ""
    body = in_method_order(body, lambda row: row[0])  # each method's draws together, methods in plan order
    header = ["method", "draw", "pairs", f"selected: test - `{baseline}`", *COMPARED_HEADERS[1:]]
    return markdown_table(header, body, align="first-left")


def _summary_rows(groups, records: dict[str, dict], keys) -> list[list]:
    """Per group of runs: its seed count and mean ± std of each key."""
    scoped = scope_metrics([r for group in groups for r in group], records)
    return [[len(group)] + [_pm([scoped[r.name].get(k, float("nan")) for r in group]) for k in keys]
            for group in groups]


def ablation_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    found = [(label, method, method_runs(runs, method, by_draw=True)) for label, method in ABLATION_ROWS.items()]
    found = [(label, method, group) for label, method, group in found if group]
    rows = _summary_rows([g for _, _, g in found], records, ("val_selected",) + COMPARED_KEYS)
    body = [[label, f"`{method}`", *row] for (label, method, _), row in zip(found, rows)]
    header = ["row", "method", "seeds", "selected: noisy val", *COMPARED_HEADERS]
    return markdown_table(header, body, align="first-left")


def beta_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    groups = sorted(group_runs(runs).items(), key=lambda kv: kv[0][3] if kv[0][3] is not None else DEFAULT_BETA)
    rows = _summary_rows([g for _, g in groups], records, ("val_selected",) + COMPARED_KEYS)
    body = [[f"{key[3] if key[3] is not None else DEFAULT_BETA:g}", *row] for (key, _), row in zip(groups, rows)]
    return markdown_table(["beta", "seeds", "selected: noisy val", *COMPARED_HEADERS], body, align="first-left")


def order_markdown(runs: Sequence[Run], records: dict[str, dict]) -> str:
    """The memory update order, judged on noisy validation (mean ± std over seeds; clean test for reference)."""
    groups = list(group_runs(runs).items())
    keys = ("val_selected", "val_last", "selected_test", "last_test", "fitted_last")
    rows = _summary_rows([g for _, g in groups], records, keys)
    body = [[f"`{key[2]}`", *row] for (key, _), row in zip(groups, rows)]
    return markdown_table(["method", "seeds", "noisy val: selected", "noisy val: last", "test: selected", "test: last",
                           "wrong labels fitted, last (%)"], body, align="first-left")
