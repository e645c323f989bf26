"""``python -m custom.cli fit_ood``: refit the out-of-distribution gate of a trained model on local images
(bundle/docs/ood.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def fit_ood(checkpoint: str, datalist: str = "", dataset_dir: str = "", images: str = "", share: float = 0.99,
            batch_size: int = 64, device: str = "cpu", seed: int = 0) -> Path:
    """Fit the gate of ``checkpoint`` and write it beside it (``model.ood.npz``), replacing the one training wrote.

    Args:
        checkpoint: the trained weights (model.pt with its run record model.json).
        datalist: a data list whose training split is fitted and whose validation split sets the threshold
            (default: the one the run trained on, from its record).
        dataset_dir: folder of the data list's images (default: the data list's, or the run's).
        images: instead of a data list, a folder of local chest X-rays (PNG, JPEG, DICOM; searched recursively):
            a random 80% is fitted, the other 20% sets the threshold.
        share: the share of the threshold images accepted (the fitted images enter as taken and once under
            :func:`custom.evaluation.ood.acquisition_jitter`).
        batch_size: images per forward pass.
        device: cpu or cuda.
        seed: seed of the 80/20 split of ``images``.

    Returns:
        the gate file written.
    """
    from ..data.datalist import DataList
    from ..evaluation.ood import fit_and_save_gate
    from ..networks import load_weights, network_from_record, rebuildable
    from ..record import read_record
    from ..serving.inference import list_inputs
    from .training import bundle_network, train_parser

    checkpoint = Path(checkpoint)
    record = read_record(checkpoint) if checkpoint.is_file() else None
    if not record or not record.get("classes") or not record.get("image_size"):
        raise ValueError(f"{checkpoint}: no run record with classes and image_size beside it (model.json): give the "
                         "model.pt a training run wrote")
    classes = record["classes"]
    network = (network_from_record(record["network"], len(classes)) if rebuildable(record.get("network"))
               else bundle_network(len(classes)))
    network = load_weights(network, checkpoint).to(device).eval()
    transform = train_parser({"image_size": int(record["image_size"])}).get_parsed_content("preprocessing")
    if images:
        items = list_inputs(images)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(items))
        cut = max(1, int(round(0.8 * len(items))))
        fit_items, threshold_items = [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]
        source = f"{len(items)} images under {images} (80% fitted, 20% for the threshold, seed {seed})"
    else:
        path = datalist or record.get("datalist")
        if not path:
            raise ValueError(f"{checkpoint}: its record names no data list: pass --datalist or --images")
        dl = DataList(path, dataset_dir or (None if datalist else record.get("dataset_dir")),
                      required_splits=("training", "validation"))
        fit_items, threshold_items = dl.items("training"), dl.items("validation")
        source = f"data list {dl.path}: {len(fit_items)} training, {len(threshold_items)} validation images"
    if len(fit_items) < 2 or not threshold_items:
        raise ValueError(f"too few images to fit the gate: {source}")
    return fit_and_save_gate(network, fit_items, threshold_items, transform, checkpoint, share, fitted_on=source,
                             device=device, batch_size=batch_size)[1]


def gate_overhead(bundle_root: str, input_path: str, output_dir: str, rounds: int = 3, **overrides) -> dict:
    """Time ``inference.json`` on ``input_path`` with the gate on and off, alternating (on, off, off, on, ...) in this
    one process after a warm-up run of each, and print the median seconds of each and their ratio. ``overrides``
    are more ``inference.json`` settings (e.g. ``image_size=64``).

    Returns:
        ``{"on": seconds, "off": seconds, "ratio": on / off, "refused": images the gate refused}``.
    """
    import statistics
    import time

    from monai.bundle import ConfigParser

    from ..config import resolve_includes
    from .training import CONFIG_DIR

    def run(enabled: bool) -> tuple[float, int]:
        parser = ConfigParser(resolve_includes(ConfigParser.load_config_files([str(CONFIG_DIR / "inference.json")]),
                                               CONFIG_DIR.parents[1]))
        parser.update({"bundle_root": str(bundle_root), "input_path": str(input_path), "ood_gate": enabled,
                       "output_dir": str(Path(output_dir) / ("on" if enabled else "off")), **overrides})
        evaluator = parser.get_parsed_content("evaluator")
        gate = parser.get_parsed_content("handlers")[0]
        start = time.perf_counter()
        evaluator.run()
        return time.perf_counter() - start, gate.refused

    times = {True: [], False: []}
    refused = 0
    for order in [(True, False)] + [(True, False) if i % 2 else (False, True) for i in range(rounds)]:
        for enabled in order:
            seconds, count = run(enabled)
            times[enabled].append(seconds)
            refused = max(refused, count)
    on, off = statistics.median(times[True][1:]), statistics.median(times[False][1:])  # the first is a warm-up
    print(f"inference with the gate {on:.2f} s, without {off:.2f} s (median of {rounds}, alternating): ratio "
          f"{on / off:.3f}; {refused} image(s) refused", flush=True)
    return {"on": on, "off": off, "ratio": on / off, "refused": refused}
