"""How well the audit finds flipped labels: train on the synthetic set at several noise levels, audit, score."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ...evaluation.figures import save_figure
from ...files import read_json, write_json
from ...files import plain_json
from ...evaluation.tables import frame_markdown
from ...training.checkpoints import find_checkpoint
from ...data.synthetic import noise_slug, split_noise_specs
from ..training import train_parser, train_through_bundle
from .audit import RANKINGS, audit
from .scores import calibrate_logits, detection_metrics, loss_score, wrong_label_sign


def benchmark_scores(table: pd.DataFrame) -> dict:
    """(N, C) score arrays of every ranking compared by the benchmark, from an :func:`audit` table.

    Besides the three rankings of the audit: the memory without the per-class calibration, the
    memory averaged with the final network (``model_weight = 0.5``), and a baseline that uses no
    image at all, ``|y_ic - freq_c|`` (the loss ranking of a network predicting only each class's
    given-positive rate): under imbalance a given positive is far more often wrong than a given
    negative, and this baseline shows how much of a ranking's AUROC that alone explains.
    """
    a = table.attrs
    y, m, z = a["labels"], a["memory_logits"], a["model_logits"]
    sign = wrong_label_sign(y)
    return {
        "memory (audit score)": sign * a["belief"],
        "memory, not calibrated": sign * m,
        "memory + final model": sign * calibrate_logits(0.5 * m + 0.5 * z, y),
        "loss (final model)": loss_score(z, y),
        "confident-learning rule": a["cl_margin"],
        "label frequency only": np.abs(y - y.mean(axis=0, keepdims=True)),
    }


def benchmark_metrics(table: pd.DataFrame, ks: Sequence[int] = (100, 1000)) -> list[dict]:
    """Detection metrics of every ranking of :func:`benchmark_scores` against the true labels.

    Per ranking: AUROC over all labels, the mean over classes of the AUROC within each class,
    the mean over (class, given label) groups of the AUROC within the group (the image evidence
    alone: it ignores how much more often given positives are wrong than negatives), and
    precision at each k and at the number of wrong labels.
    """
    truth = table.attrs.get("true_labels")
    if truth is None:
        raise ValueError("the audited data list holds no true labels ('clean_label'): nothing to score against")
    y = table.attrs["labels"]
    wrong = truth != y
    rows = []
    for name, s in benchmark_scores(table).items():
        r = detection_metrics(s, wrong, ks)
        rows.append(
            {
                "ranking": name,
                "auroc": r["auroc"],
                "auroc_class_mean": _group_auroc(s, wrong, [np.ones(len(y), bool)]),
                "auroc_within_label": _group_auroc(s, wrong, [y == 1, y == 0]),
                **{k: v for k, v in r.items() if k.startswith("precision")},
                "n_wrong": r["n_wrong"],
                "n": r["n"],
            }
        )
    return rows


def _group_auroc(scores, wrong, masks) -> float:
    """Mean AUROC over the groups (class, mask) that hold both right and wrong labels."""
    out = []
    for c in range(wrong.shape[1]):
        for mask in masks:
            sel = mask[:, c] if mask.ndim == 2 else mask
            w = wrong[sel, c]
            if 0 < w.sum() < w.size:
                out.append(roc_auc_score(w, scores[sel, c]))
    return float(np.mean(out)) if out else float("nan")


def plot_score_distributions(tables: dict, path, max_points: int | None = None) -> Path:
    """Histograms of every ranking's scores for right and wrong labels, one row per noise setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(RANKINGS)
    fig, axes = plt.subplots(len(tables), len(cols), figsize=(3.3 * len(cols), 2.3 * len(tables)), squeeze=False)
    for r, (spec, table) in enumerate(tables.items()):
        wrong = table["wrong"].to_numpy()
        for c, col in enumerate(cols):
            ax = axes[r, c]
            s = table[col].to_numpy(dtype=np.float64)
            s = np.clip(s, *np.percentile(s[np.isfinite(s)], [0.0, 99.5]))
            bins = np.linspace(s.min(), s.max(), 41)
            ax.hist(s[~wrong], bins=bins, density=True, alpha=0.55, color="tab:blue", label="right")
            ax.hist(s[wrong], bins=bins, density=True, alpha=0.55, color="tab:red", label="flipped")
            auc = roc_auc_score(wrong, table[col]) if 0 < wrong.sum() < wrong.size else float("nan")
            ax.set_title(f"{spec}: {RANKINGS[col]}\nAUROC {auc:.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if r == 0 and c == 0:
                ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path, dpi=80)


def audit_benchmark(noise="symmetric:0.2,symmetric:0.4,report", output_dir="results/audit_benchmark",
                    figure="bundle/docs/figures/audit_scores.png", retrain: bool = False, model_weight: float = 0.0,
                    ks: Sequence[int] = (100, 1000), **overrides) -> pd.DataFrame:
    """Train on the synthetic set at each noise setting, audit the training labels, and score the rankings.

    For each noise spec: trains the bundle (train.json with ``--datalist#noise SPEC``, MLflow off,
    plus ``overrides``) into ``output_dir/<spec>/``, audits the last resume checkpoint
    (``output_dir/<spec>/audit.csv`` and ``audit_by_class.csv``) and scores every ranking against
    the generator's true labels. A finished run with the same settings is reused unless ``retrain``.

    Writes ``output_dir/audit_benchmark.csv`` and ``.md`` (AUROC over all labels, mean of the
    per-class AUROCs, precision at k and at the number of wrong labels, per ranking and noise
    setting) and ``output_dir/audit_scores.png`` (score histograms of right and flipped labels),
    copied to ``figure`` when that is set.
    """
    from ...flags import as_bool

    output_dir, retrain = Path(output_dir), as_bool(retrain, "retrain")
    rows, tables = [], {}
    for spec in split_noise_specs(noise):
        root = output_dir / noise_slug(spec)
        settings = {"noise": spec, **{k: overrides[k] for k in sorted(overrides)}}
        marker = root / "settings.json"
        wanted = plain_json(settings)
        found = read_json(marker, "audit benchmark settings") if marker.is_file() else None
        if retrain or found is None or {k: v for k, v in found.items() if k != "training_seconds"} != wanted:
            print(f"\n=== training with noise {spec} into {root} ===", flush=True)
            marker.unlink(missing_ok=True)
            for old in (root / "models").glob("*.pt"):
                old.unlink()
            start = time.perf_counter()
            datalist = train_through_bundle({"datalist#noise": spec, **overrides}, bundle_root=root).datalist
            settings["training_seconds"] = round(time.perf_counter() - start, 1)
            write_json(plain_json(settings), marker)
        else:
            print(f"\n=== reusing the training run in {root} (noise {spec}) ===", flush=True)
            datalist = train_parser({"datalist#noise": spec, **overrides}).get_parsed_content("data")
        checkpoint = find_checkpoint(True, root / "models")
        table = audit(checkpoint, datalist, output=root / "audit.csv", model_weight=model_weight, ks=ks)
        tables[spec] = table
        rows += [{"noise": spec, **r} for r in benchmark_metrics(table, ks)]
    result = pd.DataFrame(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    result.to_csv(output_dir / "audit_benchmark.csv", index=False, float_format="%.4f")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    (output_dir / "audit_benchmark.md").write_text(
        frame_markdown(result, fmt=fmt) + "\n"
    )
    png = plot_score_distributions(tables, output_dir / "audit_scores.png")
    if figure:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        Path(figure).write_bytes(png.read_bytes())
    print(f"\n{result.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n")
    print(
        f"wrote {output_dir / 'audit_benchmark.csv'}, {output_dir / 'audit_benchmark.md'} and {png}"
        + (f" (copied to {figure})" if figure else "")
    )
    return result
