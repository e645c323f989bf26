"""Label audit: rank every (training image, class) label by how likely it is wrong.

The NVUM memory holds, for training image ``i`` and class ``c``, an exponential moving average of
the image's logits over training with the log class prior removed (eq. 3)::

    t_ic <- beta * t_ic + (1 - beta) * (z_ic - log pi_c)

After ``K`` updates (one per epoch, with either schedule) the memory is ``(1 - beta^K)`` times an
average of the per-epoch targets (weights ``beta^(K-k)``, normalised), so the memory's view of the
image's logit for class ``c``, on the scale of the network's logits, is::

    m_ic = t_ic / (1 - beta^K) + log pi_c        (without "+ log pi_c" for a memory stored
                                                  with unbiased_memory = false)

``m`` is what the network believed about the image over the whole of training, not only at its
end. In the first epoch every image's logits are computed before the network has trained on it
(out-of-sample predictions); a wrong label that the network memorises late still shows up in ``m``
as a label it disagreed with for most of training.

Scores (higher = more likely wrong), for the given (noisy) label ``y_ic`` in {0, 1}:

``score`` (memory, the ranking of the audit)
    the belief ``b = (1 - w) * m + w * z`` (``w = model_weight``, default 0: the memory alone;
    ``z`` the final network's logits, below) is first calibrated per class: a shift ``s_c`` is
    added to every logit of class ``c`` so that the mean probability ``mean_i sigmoid(b_ic + s_c)``
    equals the class's given-positive rate (:func:`calibrate_logits`). The score is the calibrated
    belief's probability that the given label is wrong::

        score_ic = sigmoid((1 - 2 y_ic) * (b_ic + s_c))  (= 1 - P(positive) for y = 1, P(positive) for y = 0)

    Why: when labels are flipped with a rate ``r`` that depends neither on the image nor on the
    direction of the flip (symmetric noise), the posterior probability that a given label is wrong
    is an increasing function of ``(1 - 2 y) * logit P(positive | image)`` (with the probability of
    the clean or of the noisy label alike), which is what this ranks, across images and classes.
    The calibration puts every class on the scale of its own prevalence: an average over training
    lags behind the class offsets that the network learns in its first steps (rare classes start
    far too high), which would otherwise rank the classes against each other arbitrarily. Within
    a class the order of the images is the memory's.

``loss`` (reference 1)
    the per-label binary cross-entropy of the final network, ``softplus((1 - 2 y_ic) * z_ic)`` with
    ``z`` the logits of a prediction pass over the training images (eval mode, no augmentation).

``cl_margin`` (reference 2: a confident-learning style rule, written here)
    with ``p = sigmoid(z)`` the final network's probabilities, per class ``c`` the thresholds
    ``thr1_c = mean(p_ic | y_ic = 1)`` and ``thr0_c = mean(p_ic | y_ic = 0)``; a given-negative
    label is flagged when ``p_ic >= thr1_c`` (the prediction reaches the positives' typical
    probability) and a given-positive label when ``p_ic <= thr0_c``; the margin
    ``p_ic - thr1_c`` (``y = 0``) or ``thr0_c - p_ic`` (``y = 1``) ranks the labels,
    ``cl_flagged = margin >= 0``. The probabilities are in-sample (no cross-validation).

Where the data list holds the true labels (``clean_label``, as the synthetic set does), the audit
also reports, per ranking, the detection ROC AUC of the wrong labels and the precision of the top
``k`` labels (:func:`detection_metrics`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from .data import DataList
from .networks import read_checkpoint as load_checkpoint_file

#: rankings written by :func:`audit`: column name -> label used in tables and figures.
RANKINGS = {"score": "memory", "loss": "loss (final model)", "cl_margin": "confident-learning rule"}
#: the settings of the bundle's train.json that the audit needs by default.
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"


# --------------------------------------------------------------------------------------
# Reading the checkpoint and the data
# --------------------------------------------------------------------------------------


def read_checkpoint(path) -> dict:
    """The parts of a resume checkpoint (``checkpoint_epoch=K.pt``) that the audit needs.

    Returns:
        dict with ``values`` ((N, C) float32 memory), ``log_prior`` ((C,) float32), ``epochs``
        (completed epochs = number of memory updates per row), ``network`` (the state dict of the
        evaluated network: the EMA teacher when the checkpoint has one, else the network).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable checkpoint, or one without the NVUM memory or the network.
    """
    path = Path(path)
    ckpt = load_checkpoint_file(path, "checkpoint", " (training writes bundle/models/checkpoint_epoch=K.pt)")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("memory"), dict) or "values" not in ckpt["memory"]:
        raise ValueError(
            f"checkpoint {path} holds no NVUM memory (key 'memory'); audit the resume checkpoint "
            "checkpoint_epoch=K.pt of a training run, not the bare weights in model.pt"
        )
    if not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"checkpoint {path} holds no network weights (key 'model')")
    memory = ckpt["memory"]
    values = memory["values"].float()
    if not bool(values.abs().sum() > 0):
        raise ValueError(f"the NVUM memory in {path} is all zeros: it was never updated (a run with a loss that uses no memory, e.g. --loss_name bce)")
    epochs = _completed_epochs(ckpt.get("trainer") or {})
    if epochs < 1:
        raise ValueError(f"checkpoint {path} records no completed training epoch (key 'trainer'); the memory's scale is unknown")
    teacher = ckpt.get("teacher") or {}
    return {
        "values": values,
        "log_prior": memory["log_prior"].float(),
        "epochs": epochs,
        "network": teacher if teacher else ckpt["model"],
    }


def _completed_epochs(trainer: dict) -> int:
    """Completed epochs of an ignite engine state dict (it stores either ``epoch`` or ``iteration``)."""
    if "epoch" in trainer:
        return int(trainer["epoch"])
    if "iteration" in trainer and trainer.get("epoch_length"):
        return int(trainer["iteration"]) // int(trainer["epoch_length"])
    return 0


def default_datalist() -> DataList:
    """The data list of the bundle's default training run (the ``datalist`` of train.json)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    return parser.get_parsed_content("datalist")


def memory_logits(values, log_prior, epochs: int, momentum: float = 0.9, unbiased: bool = True) -> np.ndarray:
    """The memory's view of every training logit, ``m = t / (1 - beta^K) + log pi`` (module docstring).

    Args:
        values: (N, C) memory ``t``.
        log_prior: (C,) ``log pi`` stored with the memory.
        epochs: K, the number of memory updates per row (completed epochs).
        momentum: beta used in training.
        unbiased: whether the memory subtracted ``log pi`` (train.json's ``unbiased_memory``).
    """
    values = np.asarray(values, dtype=np.float64)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
    filled = 1.0 - momentum ** max(int(epochs), 1)
    m = values / filled
    if unbiased:
        m = m + np.asarray(log_prior, dtype=np.float64)[None, :]
    return m


# --------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------


def _sign(labels) -> np.ndarray:
    """+1 where the given label is 0, -1 where it is 1: logits times this favour 'wrong'."""
    return 1.0 - 2.0 * np.asarray(labels, dtype=np.float64)


def calibrate_logits(logits, labels, tol: float = 1e-10) -> np.ndarray:
    """Shift every class's logits so that their mean probability equals the class's given-positive rate.

    For class ``c`` the shift ``b_c`` solves ``mean_i sigmoid(l_ic + b_c) = mean_i y_ic`` (bisection;
    the mean is increasing in ``b_c``). A class whose labels are all 0 (all 1) is shifted to very
    negative (positive) logits. Only one offset per class changes: the order of the images within a
    class is kept.
    """
    l = np.asarray(logits, dtype=np.float64)
    target = np.asarray(labels, dtype=np.float64).mean(axis=0)
    lo, hi = -60.0 - l.max(axis=0), 60.0 - l.min(axis=0)  # every probability ~0 at lo, ~1 at hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        above = _sigmoid(l + mid).mean(axis=0) > target
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
        if np.max(hi - lo) < tol:
            break
    return l + 0.5 * (lo + hi)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def memory_score(m, labels) -> np.ndarray:
    """``sigmoid((1 - 2y) m)``: the memory's probability that the given label is wrong."""
    return _sigmoid(_sign(labels) * np.asarray(m, dtype=np.float64))


def loss_score(logits, labels) -> np.ndarray:
    """Per-label BCE of logits against the given labels, ``softplus((1 - 2y) z)``."""
    s = _sign(labels) * np.asarray(logits, dtype=np.float64)
    return np.logaddexp(0.0, s)


def confident_learning(probs, labels) -> dict:
    """The per-class threshold rule (module docstring).

    Returns:
        dict with ``margin`` (N, C), ``flagged`` (N, C) bool, ``thr_pos`` and ``thr_neg`` (C,):
        the mean probability of the given-positive / given-negative labels of each class (NaN
        for a class without any; no label of that class is flagged then).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    with np.errstate(invalid="ignore"):
        thr_pos = np.where(y.any(0), (p * y).sum(0) / np.maximum(y.sum(0), 1), np.nan)
        thr_neg = np.where((~y).any(0), (p * ~y).sum(0) / np.maximum((~y).sum(0), 1), np.nan)
    margin = np.where(y, thr_neg[None, :] - p, p - thr_pos[None, :])
    margin = np.where(np.isnan(margin), -np.inf, margin)
    return {"margin": margin, "flagged": margin >= 0, "thr_pos": thr_pos, "thr_neg": thr_neg}


def detection_metrics(scores, wrong, ks: Sequence[int] = (100, 1000)) -> dict:
    """How well a score ranks wrong labels above right ones.

    Args:
        scores: (M,) scores, higher = more likely wrong.
        wrong: (M,) bool, the labels that differ from the truth.
        ks: cut-offs for precision at k; precision at ``n_wrong`` (R-precision) is added.

    Returns:
        dict: ``auroc``, ``precision@k`` for each k, ``precision@n_wrong``, ``n_wrong``, ``n``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    w = np.asarray(wrong, dtype=bool).ravel()
    out = {"n": int(w.size), "n_wrong": int(w.sum())}
    out["auroc"] = float(roc_auc_score(w, s)) if 0 < w.sum() < w.size else float("nan")
    order = np.argsort(-s, kind="stable")
    for k in list(ks) + [int(w.sum())]:
        k = min(int(k), w.size)
        key = "precision@n_wrong" if k == w.sum() and k not in ks else f"precision@{k}"
        out[key] = float(w[order[:k]].mean()) if k > 0 else float("nan")
    return out


# --------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------


def _network(state: dict, num_classes: int):
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=num_classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the checkpoint's network is not the bundle's DenseNet121 with {num_classes} outputs: {e}") from None
    return net


def _transform(image_size: int):
    from monai.transforms import Compose, LoadImaged

    from .transforms import ChestXrayToTensord

    return Compose([
        LoadImaged(keys="image", reader="PILReader", reverse_indexing=False, image_only=True, ensure_channel_first=True, dtype=None),
        ChestXrayToTensord(keys="image", size=image_size),
    ])


def audit(checkpoint, datalist=None, output="audit.csv", summary=None, dataset_dir=None, image_size: int = 32, memory_momentum: float = 0.9, unbiased_memory: bool = True, model_weight: float = 0.0, batch_size: int = 256, device: str = "cpu", ks: Sequence[int] = (100, 1000), quiet: bool = False) -> pd.DataFrame:
    """Rank the training labels of ``datalist`` by how likely they are wrong (module docstring).

    Args:
        checkpoint: resume checkpoint of a training run (``bundle/models/checkpoint_epoch=K.pt``).
        datalist: data list file, or a :class:`~custom.data.DataList`; default: the data of the
            bundle's train.json (the synthetic set). Its training split must be the one trained on.
        output: ranked CSV, one row per (image, class), most suspicious first.
        summary: per-class CSV; default ``<output stem>_by_class.csv`` next to ``output``.
        dataset_dir: folder the data list's image paths are relative to (default: its folder).
        image_size, memory_momentum, unbiased_memory: the training run's ``image_size``,
            ``memory_momentum`` and ``unbiased_memory`` (train.json defaults).
        model_weight: weight ``w`` of the final network's logits in the belief the score is
            computed from, ``(1 - w) * m + w * z`` (module docstring); 0 = memory only.
        batch_size, device: the prediction pass.
        ks: cut-offs of precision at k (when true labels are known).
        quiet: print nothing.

    Returns:
        the ranked table (also written to ``output``).

    Raises:
        ValueError: the data list's training split and the memory disagree in size or classes.
    """
    from .evaluation import predict
    from .utils import as_bool

    model_weight = float(model_weight)
    if not 0.0 <= model_weight <= 1.0:
        raise ValueError(f"model_weight must be in [0, 1], got {model_weight}")
    ckpt = read_checkpoint(checkpoint)
    if datalist is None:
        dl = default_datalist()
    elif isinstance(datalist, DataList):
        dl = datalist
    else:
        dl = DataList(datalist, dataset_dir, required_splits=("training",))
    n, c = ckpt["values"].shape
    if len(dl) != n or len(dl.classes) != c:
        raise ValueError(
            f"data list {dl.path} has {len(dl)} training images x {len(dl.classes)} classes but the memory in "
            f"{checkpoint} has {n} x {c}: audit with the data list the checkpoint was trained on"
        )
    items = dl.items("training")
    labels = dl.labels("training")
    classes = dl.classes

    m = memory_logits(ckpt["values"], ckpt["log_prior"], ckpt["epochs"], float(memory_momentum), as_bool(unbiased_memory, "unbiased_memory"))
    net = _network(ckpt["network"], c).to(device)
    logits = predict(net, items, _transform(int(image_size)), device, batch_size, desc="audit: predicting training images").astype(np.float64)
    probs = _sigmoid(logits)
    belief = calibrate_logits((1.0 - model_weight) * m + model_weight * logits, labels)
    cl = confident_learning(probs, labels)

    table = pd.DataFrame({
        "image": np.repeat([it["image"] for it in items], c),
        "index": np.repeat(np.arange(n), c),
        "class": np.tile(classes, n),
        "given_label": labels.ravel().astype(int),
        "score": memory_score(belief, labels).ravel(),
        "memory_prob": _sigmoid(belief).ravel(),
        "model_prob": probs.ravel(),
        "loss": loss_score(logits, labels).ravel(),
        "cl_margin": cl["margin"].ravel(),
        "cl_flagged": cl["flagged"].ravel(),
    })
    clean = _clean_labels(dl)
    if clean is not None:
        table["true_label"] = clean.ravel().astype(int)
        table["wrong"] = table["true_label"] != table["given_label"]
    for col in RANKINGS:
        if col != "score":
            table[f"{col}_rank"] = table[col].rank(ascending=False, method="first").astype(int)
    table = table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))

    table.attrs.update({"labels": labels, "true_labels": clean, "memory_logits": m, "model_logits": logits, "belief": belief, "cl_margin": cl["margin"]})
    output = Path(output)
    summary = Path(summary) if summary else output.with_name(output.stem + "_by_class.csv")
    output.parent.mkdir(parents=True, exist_ok=True)
    summary.parent.mkdir(parents=True, exist_ok=True)
    by_class = class_summary(table, classes, cl, ks)
    table.to_csv(output, index=False, float_format="%.6g")
    by_class.to_csv(summary, index=False, float_format="%.6g")
    if not quiet:
        print(f"audited {n} training images x {c} classes = {n * c} labels (memory after {ckpt['epochs']} epochs)")
        shown = table.head(10)[["rank", "image", "class", "given_label", "score", "loss_rank", "cl_margin_rank"]]
        print(f"\nmost suspicious labels:\n{shown.to_string(index=False)}\n")
        if clean is not None:
            for col, name in RANKINGS.items():
                r = detection_metrics(table[col], table["wrong"], ks)
                print(f"{name:26s} AUROC {r['auroc']:.4f}  " + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("precision")))
        print(f"\nwrote {output} and {summary}")
    return table


def _clean_labels(dl: DataList):
    try:
        return dl.labels("training", key="clean_label")
    except KeyError:
        return None


def class_summary(table: pd.DataFrame, classes: Sequence[str], cl: dict, ks: Sequence[int] = (100, 1000)) -> pd.DataFrame:
    """One row per class: given positives, mean scores, how many of the top-k labels of the ranking
    are in the class, what the confident-learning rule flags and, when true labels are known, the
    wrong labels and each ranking's AUROC within the class. ``table`` is sorted by score."""
    rows = []
    for i, name in enumerate(classes):
        t = table[table["class"] == name]
        pos = t["given_label"] == 1
        row = {
            "class": name,
            "labels": len(t),
            "given_positives": int(pos.sum()),
            "mean_score_given_positive": float(t.loc[pos, "score"].mean()) if pos.any() else float("nan"),
            "mean_score_given_negative": float(t.loc[~pos, "score"].mean()) if (~pos).any() else float("nan"),
            **{f"in_top_{k}": int((t["rank"] <= k).sum()) for k in ks},
            "cl_flagged": int(t["cl_flagged"].sum()),
            "cl_flagged_positives": int((t["cl_flagged"] & pos).sum()),
            "cl_threshold_positive": cl["thr_pos"][i],
            "cl_threshold_negative": cl["thr_neg"][i],
        }
        if "wrong" in t:
            w = t["wrong"].to_numpy()
            row["wrong"] = int(w.sum())
            row["wrong_positives"] = int((w & pos.to_numpy()).sum())
            for col in RANKINGS:
                row[f"auroc_{col}"] = float(roc_auc_score(w, t[col])) if 0 < w.sum() < len(w) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Benchmark on the synthetic set
# --------------------------------------------------------------------------------------

CONFIG_DIR = TRAIN_CONFIG.parent


def train_run(bundle_root, noise: str, **overrides) -> tuple[Path, DataList]:
    """Train the bundle (train.json, MLflow off) on the synthetic set with ``noise`` into ``bundle_root``.

    Returns the last resume checkpoint and the data list trained on.

    ``overrides`` are config ids of train.json (e.g. ``max_epochs=10``,
    ``**{"datalist#num_training": 1500}``), applied as on the command line.
    """
    from monai.bundle import ConfigWorkflow

    bundle_root = Path(bundle_root)
    wf = ConfigWorkflow(
        config_file=str(TRAIN_CONFIG), meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"), workflow_type="train",
        bundle_root=str(bundle_root), mlflow=False, **{"datalist#noise": noise}, **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return latest_checkpoint(bundle_root), wf.parser.get_parsed_content("datalist")


def latest_checkpoint(bundle_root) -> Path:
    """The resume checkpoint with the highest epoch in ``bundle_root/models``."""
    found = list((Path(bundle_root) / "models").glob("checkpoint_epoch=*.pt"))
    if not found:
        raise FileNotFoundError(f"no resume checkpoint (checkpoint_epoch=K.pt) in {Path(bundle_root) / 'models'}")
    return max(found, key=lambda p: int(p.stem.split("=")[-1]))


def split_noise_specs(noise) -> list[str]:
    """Noise specs from a list or a comma-separated string; a comma starts a new spec only
    before a letter, so ``"bomd:0.2,0.2,symmetric:0.4"`` is two specs."""
    from .synthetic import parse_noise

    if isinstance(noise, str):
        specs = [s.strip() for s in re.split(r",(?=\s*[A-Za-z])", noise) if s.strip()]
    else:
        specs = [str(s).strip() for s in noise]
    if not specs:
        raise ValueError("no noise spec given; e.g. --noise symmetric:0.2,symmetric:0.4")
    return [parse_noise(s)["spec"] for s in specs]


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
    sign = _sign(y)
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
        rows.append({"ranking": name, "auroc": r["auroc"], "auroc_class_mean": _group_auroc(s, wrong, [np.ones(len(y), bool)]),
                     "auroc_within_label": _group_auroc(s, wrong, [y == 1, y == 0]),
                     **{k: v for k, v in r.items() if k.startswith("precision")}, "n_wrong": r["n_wrong"], "n": r["n"]})
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def audit_benchmark(noise="symmetric:0.2,symmetric:0.4,report", output_dir="results/audit_benchmark", figure="bundle/docs/figures/audit_scores.png", retrain: bool = False, model_weight: float = 0.0, ks: Sequence[int] = (100, 1000), **overrides) -> pd.DataFrame:
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
    output_dir = Path(output_dir)
    rows, tables = [], {}
    for spec in split_noise_specs(noise):
        root = output_dir / re.sub(r"[^A-Za-z0-9.]+", "_", spec)
        settings = {"noise": spec, **{k: overrides[k] for k in sorted(overrides)}}
        marker = root / "settings.json"
        wanted = json.loads(json.dumps(settings, default=str))
        found = json.loads(marker.read_text()) if marker.is_file() else None
        if retrain or found is None or {k: v for k, v in found.items() if k != "training_seconds"} != wanted:
            print(f"\n=== training with noise {spec} into {root} ===", flush=True)
            marker.unlink(missing_ok=True)
            for old in (root / "models").glob("*.pt"):
                old.unlink()
            start = time.perf_counter()
            checkpoint, datalist = train_run(root, spec, **overrides)
            settings["training_seconds"] = round(time.perf_counter() - start, 1)
            marker.write_text(json.dumps({**settings}, indent=1, default=str) + "\n")
        else:
            print(f"\n=== reusing the training run in {root} (noise {spec}) ===", flush=True)
            checkpoint, datalist = latest_checkpoint(root), None
        if datalist is None:
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config(str(TRAIN_CONFIG))
            parser.update({"datalist#noise": spec, **overrides})
            datalist = parser.get_parsed_content("datalist")
        table = audit(checkpoint, datalist, output=root / "audit.csv",
                      image_size=int(overrides.get("image_size", 32)),
                      memory_momentum=float(overrides.get("memory_momentum", 0.9)),
                      unbiased_memory=overrides.get("unbiased_memory", True), model_weight=model_weight, ks=ks)
        tables[spec] = table
        rows += [{"noise": spec, **r} for r in benchmark_metrics(table, ks)]
    result = pd.DataFrame(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    result.to_csv(output_dir / "audit_benchmark.csv", index=False, float_format="%.4f")
    (output_dir / "audit_benchmark.md").write_text(_markdown_table(result) + "\n")
    png = plot_score_distributions(tables, output_dir / "audit_scores.png")
    if figure:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        Path(figure).write_bytes(png.read_bytes())
    print(f"\n{result.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n")
    print(f"wrote {output_dir / 'audit_benchmark.csv'}, {output_dir / 'audit_benchmark.md'} and {png}" + (f" (copied to {figure})" if figure else ""))
    return result


def _markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
