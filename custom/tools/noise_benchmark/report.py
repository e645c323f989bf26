"""The noise benchmark's outputs: ``results.md``, ``results.csv`` and the per-epoch figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ...data.synthetic import noise_slug
from ...evaluation.figures import save_figure
from .methods import NEW_DRAWS, Regime, Run, unique_runs
from .tables import (
    ablation_markdown,
    common_diseases,
    kept_diseases,
    beta_markdown,
    gaps_markdown,
    draws,
    group_runs,
    in_method_order,
    main_markdown,
    order_markdown,
    results_table,
    run_metrics,
)
from .targets import (
    HEAD_TO_HEAD_RULE,
    PAPER_FORM,
    RULE,
    TEACHER_FORM,
    choose_default,
    choose_default_head_to_head,
    default_recipe,
    evaluate_targets,
    head_to_head_markdown,
    targets_markdown,
)

#: the panels of a curve figure: (history key, title, y label).
PANELS = (("val", "noisy validation", "mean AUC over the diseases (points)"),
          ("test", "clean test (in-distribution)", "mean AUC over the diseases (points)"),
          ("test_shifted", "clean test (shifted)", "mean AUC over the diseases (points)"),
          ("fitted", "wrong training labels fitted", "share of the wrong labels (%)"))


def _series(record: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of one run's measured epochs for a panel."""
    epochs, values = [], []
    for row in record["history"]:
        if key == "val":
            value = row["val"]
        elif key == "fitted":
            value = (row.get("fitted") or {}).get("all")
        else:
            value = (row.get("curve") or {}).get(key)
        if value is not None:
            epochs.append(row["epoch"])
            values.append(100 * value)
    return np.array(epochs), np.array(values)


def curve_figure(runs: Sequence[Run], records: dict[str, dict], path, title: str = "") -> Path:
    """Per epoch, every method (mean over seeds, band: min-max): noisy-validation AUC, clean-test AUC
    on both splits, and the share of the wrong training labels the network has fitted, with the
    share that random scores fit (chance) and that a perfect clean ranking fits as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [p for p in PANELS if any(len(_series(records[r.name], p[0])[0]) for r in runs)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), dpi=90, sharex=True, squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for i, ((noise, regime, method, beta, draw), group) in enumerate(group_runs(runs, by_draw=False).items()):
        for ax, (key, name, ylabel) in zip(axes[0], panels):
            series = [_series(records[r.name], key) for r in group]
            epochs = series[0][0]
            if not len(epochs) or any(not np.array_equal(s[0], epochs) for s in series):
                epochs, curves = (
                    series[0][0],
                    np.array([series[0][1]]),
                )  # seeds measured at other epochs: the first seed
            else:
                curves = np.array([s[1] for s in series])
            if not len(epochs):
                continue
            ax.plot(epochs, curves.mean(axis=0), color=colours[i % 10], lw=1.5, label=method)
            if len(curves) > 1:
                ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=colours[i % 10], alpha=0.15, lw=0)
            ax.set_title(name, fontsize=10)
            ax.set_ylabel(ylabel, fontsize=8)
    fitted_panel = [ax for ax, p in zip(axes[0], panels) if p[0] == "fitted"]
    references = [records[r.name].get("fitted_reference") or {} for r in runs]
    for key, label, style in (("curve_chance", "chance (random scores)", "--"),
                              ("curve_clean_ranking", "perfect clean ranking", ":")):
        levels = [ref[key] for ref in references if ref.get(key) is not None]
        if fitted_panel and levels:
            fitted_panel[0].axhline(100 * float(np.mean(levels)), color="0.3", ls=style, lw=1, label=label)
    if fitted_panel:
        fitted_panel[0].legend(fontsize=7)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _regime_text(regimes: dict[str, Regime], names) -> str:
    parts = []
    for name in names:
        r = regimes[name]
        parts.append(
            f"`{name}`: {r.num_training} training / {r.num_validation} validation images (noisy), {r.num_test} + "
            f"{r.num_test_shifted} clean test images (in-distribution + shifted), {r.image_size} px, network "
            f"`{r.network}`, Adam {r.learning_rate:g} ({r.schedule} schedule), batch {r.batch_size}, "
            f"{r.max_epochs} epochs"
            f"{f', clean tests measured every {r.eval_every} epochs' if r.eval_every > 1 else ''}"
        )
    return "; ".join(parts)


def _left_out_text(records: dict, runs: Sequence[Run]) -> list[str]:
    """The diseases each test split leaves out of its mean (fewer than the minimum of positives), per
    regime and draw (each run's own), and what the rows pooled over several draws leave out."""
    seen: dict[tuple, dict[tuple, None]] = {}
    for r in runs:
        for split, names in (records[r.name].get("left_out") or {}).items():
            seen.setdefault((r.regime, r.data_seed, split), {})[tuple(names)] = None
    lines = [
        f"- `{regime}`, draw {draw}, `{split}`: " + " or ".join(", ".join(names) or "none" for names in found)
        for (regime, draw, split), found in seen.items()
    ]
    for regime in dict.fromkeys(r.regime for r in runs):
        scoped = [r for r in runs if r.regime == regime]
        if len(draws(scoped)) > 1:
            common = common_diseases([records[r.name] for r in scoped])
            every = kept_diseases({})
            lines.append(
                f"- `{regime}`, every draw pooled (`all` rows, differences and targets over the draws): "
                + "; ".join(f"`{split}`: " + (", ".join(sorted(every[split] - common[split])) or "none")
                            for split in common)
                + " (the diseases every pooled draw keeps, so that every run enters a pooled mean with the same "
                "diseases)"
            )
    return lines


PARTS = (("main", "Main table"), ("clean", "Clean labels: the ceiling"),
         ("more", "Further baselines (first draw; `--extended`)"), ("stress", "Other noise models (stress rows)"),
         ("gpu", "DenseNet121 at 64 px (GPU matrix)"))


def write_outputs(plan: dict[str, list[Run]], records: dict[str, dict], output, regimes: dict[str, Regime],
                  command: str = "", wall_seconds: float | None = None, trained: int | None = None) -> Path:
    """Write ``results.md``, ``results.csv`` (one row per run) and the curve figures; returns ``results.md``.

    ``command`` (with its ``wall_seconds`` and the number of runs it ``trained``) is added to the folder's
    :data:`COMMANDS` file unless it trained nothing: a report rewritten from the run records (every run
    read, none trained) names the commands that trained them, with their wall times."""
    import pandas as pd

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    used = unique_runs(plan)
    rows = []
    for run in used:
        rec = records[run.name]
        rows.append(
            {
                **dataclasses.asdict(run),
                "name": run.name,
                **run_metrics(rec),
                "seconds": rec["seconds"],
                "cpu_seconds": rec.get("cpu_seconds"),
            }
        )
    pd.DataFrame(rows).to_csv(output / "results.csv", index=False)

    cpu = sum(records[r.name].get("cpu_seconds", float("nan")) for r in used) / 60
    commands = _commands(output, command, wall_seconds, trained)
    text = ["# Synthetic noisy-label benchmark", ""]
    if commands:
        text += ["Command:" if len(commands) == 1 else "Commands (each trained the runs the folder lacked):", ""]
        text += [f"    {c['command']}" for c in commands] + [""]
    regimes_used = sorted({r.regime for r in used}, key=list(regimes).index)
    text += [
        f"Regimes: {_regime_text(regimes, regimes_used)}.",
        "",
        "AUC is the mean over the diseases (No Finding excluded) with at least 10 positives in the test split, "
        "in points (x100); "
        "mean ± std over seeds (one value: one seed). `selected`: the epoch with the best mean AUC on the "
        "*noisy* validation "
        "split (the checkpoint the bundle keeps); `last`: the final epoch; `drop`: selected minus last, both on "
        "the whole test split (what training on from the shipped checkpoint costs: the memorisation signature; "
        "negative when the last epoch is better). The figures show the curve (every few epochs, on part of each "
        "test split) for the shape only. *Wrong labels fitted*: "
        "the share of "
        "the training labels that differ from the truth which the network's prediction sides with (per class, "
        "the images "
        "ranked in the top noisy-prevalence share are called positive; custom/tools/noise_benchmark/fitting.py); "
        "scores that carry no information fit a share of them too (the *chance* level, drawn on the figures with "
        "the share a perfect ranking by the clean labels fits). A *draw* is one synthetic set (its generator's seed, "
        "`data_seed`); seeds are the training seeds of a draw. Paired differences pair runs of the same draw and "
        "seed; their 95% t-interval is over the pairs, so it holds for these draws.",
        "",
        "Diseases left out of the mean (fewer than 10 positives in the split):",
        "",
        *_left_out_text(records, used),
        "",
        f"{len(used)} runs; {cpu:.1f} min of CPU time (one thread per run), "
        f"{sum(records[r.name]['seconds'] for r in used) / 60:.1f} min of run wall time"
        + "".join(_wall_text(c, len(commands)) for c in commands)
        + ".",
        "",
    ]
    if plan.get("main"):
        first = choose_default(plan["main"], records)
        head = choose_default_head_to_head(plan["main"], records)
        table = head_to_head_markdown(head)
        default = default_recipe(plan["main"], records)
        text += ["## The default recipe: the rules, each fixed before its run", "",
                 f"### Head to head on new draws (data seeds {', '.join(str(d) for d in NEW_DRAWS)})", "",
                 HEAD_TO_HEAD_RULE, "", f"Outcome: {head['text']}", ""]
        if table:
            text += [f"`{TEACHER_FORM}` - `{PAPER_FORM}`, paired by draw and seed (points; mean [95% t-interval over "
                     "the pairs]; only the new draws decide):", "", table, ""]
        text += ["### The first rule (draws 0 and 1)", "", RULE, "", f"Outcome: {first['text']}", ""]
        if head["default"] is None:
            text += [f"Until the head-to-head rule is decided, the default recipe is the first rule's, "
                     f"`{first['default']}`.", ""]
        text += ["## Targets", "", f"About the default recipe, `{default}`.", "",
                 targets_markdown(evaluate_targets(plan, records, default)), ""]
    for part, title in PARTS:
        runs = plan.get(part) or []
        if not runs:
            continue
        several = len(draws(runs)) > 1
        rows = results_table(runs, records)
        if several:
            rows = in_method_order(rows, lambda r: r["method"])
            rows += results_table(runs, records, by_draw=False)
        text += [f"## {title} (`{runs[0].regime}` regime)", ""]
        if several:
            text += ["Each draw, then every draw together (`all`: mean ± std over every run):", ""]
        text += [main_markdown(rows, show_draw=several or any(r.data_seed for r in runs)), ""]
        if part in ("main", "gpu", "more"):
            gaps = gaps_markdown(runs, records)
            if gaps:
                text += [
                    "Difference to plain BCE, paired by draw and seed (points; mean [95% t-interval over the pairs]):",
                    "",
                    gaps,
                    "",
                ]
        for (noise, reg, draw), group in _by_noise_regime(runs).items():
            if all(r.curve for r in group):
                suffix = f"_data{draw}" if draw else ""
                name = f"curve_{noise_slug(noise)}_{reg}{suffix}.png"
                caption = f"{noise} noise, {reg} regime, draw {draw}"
                curve_figure(group, records, output / name, title=caption)
                text += [f"![Per epoch, {caption}]({name})", ""]
    if plan.get("order"):
        text += ["## Memory update order (judged on noisy validation)", "", order_markdown(plan["order"], records), ""]
    if plan.get("ablation"):
        text += [
            "## Ablation: where the class prior goes (paper, Fig. 2 left)",
            "",
            ablation_markdown(plan["ablation"], records),
            "",
        ]
    if plan.get("beta"):
        text += ["## Memory momentum beta (paper, Fig. 2 right; `nvum`)", "", beta_markdown(plan["beta"], records), ""]
    path = output / "results.md"
    path.write_text("\n".join(text) + "\n")
    return path


#: the file of an output folder listing the commands that trained its runs (command, runs trained, wall seconds).
COMMANDS = "commands.json"


def _commands(output: Path, command: str, wall_seconds: float | None, trained: int | None) -> list[dict]:
    """The commands that trained the folder's runs: those of :data:`COMMANDS`, with ``command`` added
    (and the file rewritten) unless it trained no run."""
    from ...files import read_json, write_json

    path = output / COMMANDS
    commands = read_json(path, "the noise benchmark's command list") if path.is_file() else []
    if command and trained != 0:
        commands.append({"command": command, "runs_trained": trained, "wall_seconds": wall_seconds})
        write_json(commands, path)
    return commands


def _wall_text(command: dict, count: int) -> str:
    wall = command.get("wall_seconds")
    if not wall:
        return ""
    if count == 1:
        return f", {wall / 60:.1f} min wall for the command"
    runs = command.get("runs_trained")
    trained = f" ({runs} run{'s' if runs != 1 else ''})" if runs else ""
    return f", {wall / 60:.1f} min wall for `{command['command']}`{trained}"


def _by_noise_regime(runs: Sequence[Run]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault((r.noise, r.regime, r.data_seed), []).append(r)
    return out
