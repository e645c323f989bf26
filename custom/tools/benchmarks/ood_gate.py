"""Inference time with and without the out-of-distribution gate (``python -m custom.cli benchmark_ood_gate``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .common import environment, write


def ood_gate(bundle_root: str = "bundle", input_path: str | None = None, num_images: int = 500, rounds: int = 3,
             image_size: int | None = None, output: str | None = "results/benchmark_ood_gate.json") -> dict:
    """Time ``inference.json`` on the same images with the gate on and off, alternating in one process
    (:func:`custom.tools.ood.gate_overhead`), and write the medians and their ratio.

    Args:
        bundle_root: a trained bundle: its ``models/model.pt`` and the gate beside it (``model.ood.npz``).
        input_path: a folder of images; default: the first ``num_images`` test images of the data list the
            bundle trains on (train.json's ``data``; the synthetic set by default).
        num_images: how many test images, without ``input_path``.
        rounds: timed runs with the gate and without it (after one warm-up run of each).
        image_size: the training image size, when not train.json's.
        output: JSON file of the results (empty: none).
    """
    from ...evaluation.ood import ood_path
    from ..ood import gate_overhead
    from ..training import train_parser

    bundle_root = Path(bundle_root)
    if not ood_path(bundle_root / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"no gate beside {bundle_root / 'models' / 'model.pt'}: train first (python -m "
                                "monai.bundle run training --config_file bundle/configs/train.json) or fit one "
                                "(python -m custom.cli fit_ood)")
    overrides = {} if image_size is None else {"image_size": int(image_size)}
    with tempfile.TemporaryDirectory(prefix="nvum-gate-benchmark-") as tmp:
        if input_path is None:
            data = train_parser({"bundle_root": str(bundle_root), **overrides}).get_parsed_content("data")
            items = data.items("test")[: int(num_images)]
            input_path = Path(tmp) / "images"
            input_path.mkdir()
            for i, item in enumerate(items):
                source = Path(item["image"])
                shutil.copy(source, input_path / f"{i:05d}{source.suffix}")
        count = sum(1 for p in Path(input_path).iterdir() if p.is_file())
        result = gate_overhead(str(bundle_root), str(input_path), str(Path(tmp) / "out"), rounds=int(rounds),
                               **overrides)
    result = {**result, "num_images": count, "rounds": int(rounds), **environment()}
    write(result, output)
    return result
