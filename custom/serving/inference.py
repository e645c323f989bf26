"""Inference helpers: listing input images, reading them without letting one bad file stop the
run, and writing per-class probabilities (and the images that could not be read) to CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset, MetaTensor

from ..data.datalist import DataList
from ..data.dicom import DICOM_SUFFIXES, is_dicom
from ..flags import as_bool

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES
#: item key of :class:`InferenceDataset`: why the item's image could not be read ("" when it could).
READ_ERROR = "read_error"


def list_inputs(input_path, split: str = "test", dataset_dir=None) -> list[dict]:
    """Items to predict: every PNG/JPEG/DICOM file under a folder (DICOM files without a suffix are found by
    their marker; ``DICOMDIR`` is not an image), or one split of a data list.

    Args:
        input_path: a folder of images (searched recursively, sorted) or a data list file.
        split: the split to read when ``input_path`` is a data list.
        dataset_dir: image folder of a data list (default: the data list's folder).

    Returns:
        list of ``{"image": path}`` dicts. The images of a data list are not looked at here: a
        missing or unreadable one is reported when it is read (:class:`InferenceDataset`).

    Raises:
        FileNotFoundError: ``input_path`` does not exist or holds no image.
        DataListError: a data list that is not valid.
    """
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       or (p.suffix == "" and p.name != "DICOMDIR" and p.is_file() and is_dicom(p)))
        if not files:
            raise FileNotFoundError(f"no PNG, JPEG or DICOM image found under {path}")
        return [{"image": str(p)} for p in files]
    if path.is_file():
        datalist = DataList(path, dataset_dir, required_splits=(split,), check_images=False)
        return [{"image": d["image"]} for d in datalist.items(split)]
    raise FileNotFoundError(f"inference input not found: {path} (give a folder of images or a data list)")


class InferenceDataset(Dataset):
    """MONAI's ``Dataset`` for inference, where one unreadable image does not stop the run.

    When the transform of an item fails (a missing, truncated or corrupt file, not an image, too
    large to decode safely), the item is replaced by a placeholder image (the preprocessing after
    the image loader, applied to a blank image) and carries the reason under ``read_error``
    (an empty string for images that were read). :class:`ProbabilityWriter` leaves such items out
    of the probabilities and lists them in its errors file.

    Args:
        data: the items (``{"image": path}``), e.g. from :func:`list_inputs`.
        transform: the preprocessing; its ``LoadImaged`` transforms are what may fail.
        strict: true: the first unreadable image stops the run, naming the file and the reason.
    """

    def __init__(self, data, transform, strict: bool = False):
        super().__init__(data, transform)
        self.strict = as_bool(strict, "strict")

    def _after_loading(self):
        from monai.transforms import Compose, LoadImaged

        transforms = getattr(self.transform, "transforms", [self.transform])
        return Compose([t for t in transforms if not isinstance(t, LoadImaged)])

    def _transform(self, index: int):
        try:
            out = super()._transform(index)
        except Exception as e:
            if self.strict:
                raise
            item = dict(self.data[index])
            blank = MetaTensor(torch.zeros(1, 8, 8, dtype=torch.uint8),
                               meta={"filename_or_obj": str(item.get("image", ""))})
            out = self._after_loading()({**item, "image": blank})
            out[READ_ERROR] = read_error(e)
            return out
        out[READ_ERROR] = ""
        return out


def read_error(exc: BaseException) -> str:
    """Why an image could not be read: the reason of the :class:`~custom.data.transforms.ImageReadError`
    in the exception's chain, else the project's message of the error."""
    from ..console import exception_chain, message, project_exception
    from ..data.transforms import ImageReadError

    for item in exception_chain(exc):
        if isinstance(item, ImageReadError):
            return item.reason
    return message(project_exception(exc)).splitlines()[0]


class ProbabilityWriter:
    """Writes one CSV row per image: the image path and the probability of every class.

    Reads the decollated evaluator output (``pred``: (C,) probabilities; ``image``: a MetaTensor
    whose ``filename_or_obj`` names the file) and batch (``read_error``, set by
    :class:`InferenceDataset`). Images that could not be read get no row: they go to
    ``errors_file`` (``image``, ``reason``), which is written only when there are some (a stale
    one from an earlier run is removed), and are counted in the final line. When no image at all
    could be read, the run stops (the errors file names every image and its reason).

    Args:
        output_file: the CSV file (its folder is created).
        classes: class names, the CSV's header after ``image``.
        errors_file: the CSV of the images that could not be read (default: ``errors.csv`` beside ``output_file``).
    """

    def __init__(self, output_file, classes: Sequence[str], errors_file=None):
        self.output_file, self.classes = Path(output_file), list(classes)
        self.errors_file = Path(errors_file) if errors_file else self.output_file.with_name("errors.csv")
        self._rows: list[list] = []
        self._errors: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._rows.clear()
        self._errors.clear()

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [{}] * len(engine.state.output)
        for item, source in zip(engine.state.output, batch):
            image = str(item["image"].meta.get("filename_or_obj", ""))
            reason = source.get(READ_ERROR, "") if isinstance(source, dict) else ""
            if reason:
                self._errors.append([image, reason])
                continue
            probs = torch.as_tensor(item["pred"]).float().flatten().tolist()
            if len(probs) != len(self.classes):
                raise ValueError(f"the network gives {len(probs)} outputs but {len(self.classes)} class names are "
                                 "configured")
            self._rows.append([image] + [f"{p:.6f}" for p in probs])

    @staticmethod
    def _write_csv(path: Path, header: list, rows: list) -> None:
        from ..files import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    def _write(self, engine: Engine) -> None:
        self._write_csv(self.output_file, ["image"] + self.classes, self._rows)
        if self._errors:
            self._write_csv(self.errors_file, ["image", "reason"], self._errors)
        elif self.errors_file.is_file():
            self.errors_file.unlink()  # from an earlier run into the same folder
        line = f"wrote probabilities of {len(self._rows)} image(s) to {self.output_file}"
        if self._errors:
            line += f"; {len(self._errors)} skipped, unreadable (see {self.errors_file})"
        print(line, flush=True)
        if self._errors and not self._rows:
            image, reason = self._errors[0]
            raise ValueError(f"none of the {len(self._errors)} input image(s) could be read, e.g. {image}: {reason} "
                             f"(every image and its reason: {self.errors_file})")
