"""The label audit: every (training image, class) label of a run ranked by how likely it is wrong.

The scores are explained in :mod:`custom.tools.audit.scores`; this module reads the checkpoint,
runs the final network over the training images, and writes the ranked table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ...data import DataList
from ...networks import read_checkpoint as load_checkpoint_file
from ..training import train_parser
from .scores import (calibrate_logits, confident_learning, detection_metrics, loss_score, memory_logits, memory_score,
                     sigmoid)

#: rankings written by :func:`audit`: column name -> label used in tables and figures.
RANKINGS = {"score": "memory", "loss": "loss (final model)", "cl_margin": "confident-learning rule"}


def read_checkpoint(path) -> dict:
    """The parts of a resume checkpoint (``checkpoint_epoch=K.pt``) that the audit needs.

    Returns:
        dict with ``values`` ((N, C) float32 memory), ``log_prior`` ((C,) float32), ``epochs``
        (completed epochs = number of memory updates per row), ``network`` (the state dict of the
        evaluated network: the EMA teacher when the checkpoint has one, else the network) and
        ``record`` (the run's :class:`~custom.record.RunRecord`: data list, input size,
        network definition, memory momentum, ``unbiased``).

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
    record = ckpt.get("run_record")
    if not isinstance(record, dict) or not record.get("nvum") or not record.get("image_size"):
        raise ValueError(f"checkpoint {path} holds no run record (key 'run_record'): it was written by an older "
                         "version of the bundle; retrain to audit it")
    memory = ckpt["memory"]
    values = memory["values"].float()
    if not bool(values.abs().sum() > 0):
        raise ValueError(f"the NVUM memory in {path} is all zeros: it was never updated (a run with a loss that uses "
                         "no memory, e.g. --nvum#loss bce)")
    epochs = _completed_epochs(ckpt.get("trainer") or {})
    if epochs < 1:
        raise ValueError(f"checkpoint {path} records no completed training epoch (key 'trainer'); the memory's scale "
                         "is unknown")
    teacher = ckpt.get("teacher") or {}
    return {
        "values": values,
        "log_prior": memory["log_prior"].float(),
        "epochs": epochs,
        "network": teacher if teacher else ckpt["model"],
        "record": record,
    }


def _completed_epochs(trainer: dict) -> int:
    """Completed epochs of an ignite engine state dict (it stores either ``epoch`` or ``iteration``)."""
    if "epoch" in trainer:
        return int(trainer["epoch"])
    if "iteration" in trainer and trainer.get("epoch_length"):
        return int(trainer["iteration"]) // int(trainer["epoch_length"])
    return 0


def _network(state: dict, record: dict, num_classes: int):
    """The trained network: the recorded definition (else the bundle's network), with the checkpoint's weights."""
    from ...networks import network_config, rebuild_network
    from ..training import bundle_network

    recorded = record.get("network")
    stock = None if network_config(recorded) else bundle_network(num_classes)  # a record naming only a class
    net = rebuild_network(recorded, num_classes, stock, "the checkpoint's run record")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the checkpoint's network does not match its recorded definition {record.get('network')}: "
                         f"{e}") from None
    return net


def audit(checkpoint, datalist=None, output="audit.csv", summary=None, dataset_dir=None, model_weight: float = 0.0,
          batch_size: int = 256, device: str = "cpu", ks: Sequence[int] = (100, 1000),
          quiet: bool = False) -> pd.DataFrame:
    """Rank the training labels of ``datalist`` by how likely they are wrong (module docstring).

    What the run trained (data list, input size, network, memory momentum, ``unbiased``) is read
    from the checkpoint's run record.

    Args:
        checkpoint: resume checkpoint of a training run (``bundle/models/checkpoint_epoch=K.pt``).
        datalist: data list file, or a :class:`~custom.data.DataList`; default: the one the run
            trained on (its record). Its training split must be the one trained on.
        output: ranked CSV, one row per (image, class), most suspicious first.
        summary: per-class CSV; default ``<output stem>_by_class.csv`` next to ``output``.
        dataset_dir: folder the data list's image paths are relative to (default: the run's
            ``dataset_dir`` when ``datalist`` is not given, else the data list's folder).
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
    from ...evaluation import predict
    from ...flags import as_bool

    model_weight = float(model_weight)
    if not 0.0 <= model_weight <= 1.0:
        raise ValueError(f"model_weight must be in [0, 1], got {model_weight}")
    ckpt = read_checkpoint(checkpoint)
    record = ckpt["record"]
    if datalist is None:
        if not record.get("datalist"):
            raise ValueError(f"checkpoint {checkpoint} does not record its data list: pass --datalist")
        dl = DataList(record["datalist"], dataset_dir or record.get("dataset_dir"), required_splits=("training",))
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

    nvum = record["nvum"]
    if not quiet:
        recorded = record.get("network") or {}
        network = recorded.get("name") or recorded.get("class") or "the bundle's network"
        source = "from the run record" if datalist is None else "given"
        print(f"checkpoint {checkpoint}: {ckpt['epochs']} epoch(s) of {network} at {record['image_size']} px, "
              f"memory momentum {nvum['memory_momentum']}; auditing data list {dl.path} (images in {dl.dataset_dir}; "
              f"{source}): {n} training images x {c} classes", flush=True)
    m = memory_logits(ckpt["values"], ckpt["log_prior"], ckpt["epochs"], float(nvum["memory_momentum"]),
                      as_bool(nvum["unbiased_memory"], "unbiased_memory"))
    net = _network(ckpt["network"], record, c).to(device)
    transform = train_parser({"image_size": int(record["image_size"])}).get_parsed_content("preprocessing")
    logits = predict(net, items, transform, device, batch_size,
                     desc="audit: predicting training images").astype(np.float64)
    probs = sigmoid(logits)
    belief = calibrate_logits((1.0 - model_weight) * m + model_weight * logits, labels)
    cl = confident_learning(probs, labels)

    table = pd.DataFrame({
        "image": np.repeat([it["image"] for it in items], c),
        "index": np.repeat(np.arange(n), c),
        "class": np.tile(classes, n),
        "given_label": labels.ravel().astype(int),
        "score": memory_score(belief, labels).ravel(),
        "memory_prob": sigmoid(belief).ravel(),
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

    table.attrs.update({"labels": labels, "true_labels": clean, "memory_logits": m, "model_logits": logits,
                        "belief": belief, "cl_margin": cl["margin"]})
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
                print(f"{name:26s} AUROC {r['auroc']:.4f}  " + "  ".join(f"{k} {v:.3f}" for k,
                                                                         v in r.items() if k.startswith("precision")))
        print(f"\nwrote {output} and {summary}")
    return table


def _clean_labels(dl: DataList):
    try:
        return dl.labels("training", key="clean_label")
    except KeyError:
        return None


def class_summary(table: pd.DataFrame, classes: Sequence[str], cl: dict,
                  ks: Sequence[int] = (100, 1000)) -> pd.DataFrame:
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
