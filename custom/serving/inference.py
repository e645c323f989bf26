"""Inference helpers: listing input images and writing per-class probabilities to CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Engine, Events

from ..data.datalist import DataList
from ..data.dicom import DICOM_SUFFIXES, is_dicom

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES


def list_inputs(input_path, split: str = "test", dataset_dir=None) -> list[dict]:
    """Items to predict: every PNG/JPEG/DICOM file under a folder (DICOM files without a suffix are found by
    their marker; ``DICOMDIR`` is not an image), or one split of a data list.

    Args:
        input_path: a folder of images (searched recursively, sorted) or a data list file.
        split: the split to read when ``input_path`` is a data list.
        dataset_dir: image folder of a data list (default: the data list's folder).

    Returns:
        list of ``{"image": path}`` dicts.

    Raises:
        FileNotFoundError: ``input_path`` does not exist or holds no image.
    """
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       or (p.suffix == "" and p.name != "DICOMDIR" and p.is_file() and is_dicom(p)))
        if not files:
            raise FileNotFoundError(f"no PNG, JPEG or DICOM image found under {path}")
        return [{"image": str(p)} for p in files]
    if path.is_file():
        return [{"image": d["image"]} for d in DataList(path, dataset_dir, required_splits=(split,)).items(split)]
    raise FileNotFoundError(f"inference input not found: {path} (give a folder of images or a data list)")


class ProbabilityWriter:
    """Writes one CSV row per image: the image path and the probability of every class.

    Reads the decollated evaluator output (``pred``: (C,) probabilities; ``image``: a MetaTensor
    whose ``filename_or_obj`` names the file).

    Args:
        output_file: the CSV file (its folder is created).
        classes: class names, the CSV's header after ``image``.
    """

    def __init__(self, output_file, classes: Sequence[str]):
        self.output_file, self.classes = Path(output_file), list(classes)
        self._rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self._rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            probs = torch.as_tensor(item["pred"]).float().flatten().tolist()
            if len(probs) != len(self.classes):
                raise ValueError(f"the network gives {len(probs)} outputs but {len(self.classes)} class names are configured")
            self._rows.append([str(item["image"].meta.get("filename_or_obj", ""))] + [f"{p:.6f}" for p in probs])

    def _write(self, engine: Engine) -> None:
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output_file.with_suffix(self.output_file.suffix + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + self.classes)
            writer.writerows(self._rows)
        tmp.replace(self.output_file)
        print(f"wrote probabilities of {len(self._rows)} image(s) to {self.output_file}", flush=True)
