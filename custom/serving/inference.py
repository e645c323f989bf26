"""Inference helpers: listing input images, reading them without letting one bad file stop the
run, and writing per-class probabilities (and the images that could not be read, were refused or
are degenerate) to CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset, MetaTensor

from ..data.datalist import DataList
from ..files import is_inside
from ..data.dicom import DICOM_SUFFIXES, dicom_guard_enabled, guard_file, is_dicom
from ..data.datalist import DEGENERATE_IMAGE_POLICIES
from ..data.transforms import ImageReadError, degenerate_tensor_reason
from ..data.keys import INPUT_WARNING, READ_ERROR, REFUSED
from ..data.messages import degenerate_refused, degenerate_warned
from ..flags import as_bool

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES


def list_inputs(input_path, split: str = "test", dataset_dir=None) -> list[dict]:
    """Items to predict: every PNG/JPEG/DICOM file under a folder (DICOM files without a suffix are found by
    their marker; ``DICOMDIR`` is not an image), or one split of a data list.

    Args:
        input_path: a folder of images (searched recursively, sorted) or a data list file.
        split: the split to read when ``input_path`` is a data list.
        dataset_dir: image folder of a data list (default: the data list's folder).

    Returns:
        list of ``{"image": path}`` dicts. The images of a data list are not looked at here: a
        missing or unreadable one is reported when it is read (:class:`InferenceDataset`). A file of
        the folder that is a link leading out of it carries why under ``refused``: it is not read,
        and goes to the errors file like an unreadable image (a data list's paths are checked by
        :class:`~custom.data.DataList`, which refuses such links).

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
        root = os.path.realpath(path)
        items = []
        for p in files:
            target = os.path.realpath(p)
            if is_inside(target, root):
                items.append({"image": str(p)})
            else:
                items.append({"image": str(p), REFUSED: f"a link that leaves the input folder ({path}): it points to "
                                                         f"{target}; not read"})
        return items
    if path.is_file():
        datalist = DataList(path, dataset_dir, required_splits=(split,), check_images=False)
        return [{"image": d["image"]} for d in datalist.items(split)]
    raise FileNotFoundError(f"inference input not found: {path} (give a folder of images or a data list)")


class InferenceDataset(Dataset):
    """MONAI's ``Dataset`` for inference, where one unreadable image does not stop the run.

    When the transform of an item fails (a missing, truncated or corrupt file, not an image, too
    large to decode safely), the item is replaced by a placeholder image (the preprocessing after
    the image loader, applied to a blank image) and carries the reason under ``read_error``
    (an empty string for images that were read). An item that :func:`list_inputs` refused (a link
    out of the input folder: ``refused``) is not read and becomes such a placeholder too.
    :class:`ProbabilityWriter` leaves such items out of the probabilities and lists them in its
    errors file.

    A DICOM file whose header says it is not a frontal chest radiograph (a CT slice, an abdomen, a lateral
    view; :func:`custom.data.dicom.guard_reason`) is refused unread, with the reason, unless ``dicom_guard``
    is false.

    A degenerate image (a side under ``image_size / 4``, or constant; see
    :func:`custom.data.transforms.degenerate_reason`), tested on the loaded image before the rest of
    the preprocessing, is scored with the reason under ``input_warning`` (the writer lists it in the
    errors file too), or with ``degenerate_images="refuse"`` refused like a link (``refused``).

    Args:
        data: the items (``{"image": path}``), e.g. from :func:`list_inputs`.
        transform: the preprocessing; its ``LoadImaged`` transforms are what may fail.
        strict: true: the first unreadable or refused image stops the run, naming the file and the reason.
        dicom_guard: refuse DICOM files whose header says they are not frontal chest radiographs
            (:func:`custom.data.dicom.guard_reason`: Modality, BodyPartExamined, ViewPosition), like a link
            (``refused``). Default (``None``): on unless ``$NVUM_DICOM_GUARD`` is ``0``.
        image_size: the network's input side, for the size rule of degenerate images (none without it).
        degenerate_images: ``"warn"`` (default) or ``"refuse"``.
    """

    def __init__(self, data, transform, strict: bool = False, image_size: int | None = None,
                 degenerate_images: str = "warn", dicom_guard=None):
        if degenerate_images not in DEGENERATE_IMAGE_POLICIES:
            raise ValueError(f"degenerate_images must be one of {DEGENERATE_IMAGE_POLICIES}, got {degenerate_images!r}")
        super().__init__(data, transform)
        self.strict = as_bool(strict, "strict")
        self.image_size = int(image_size) if image_size else None
        self.degenerate_images = degenerate_images
        self.dicom_guard = dicom_guard_enabled() if dicom_guard is None else as_bool(dicom_guard, "dicom_guard")
        self._loading, self._after = self._split_transform()

    def _split_transform(self):
        """The preprocessing up to its last ``LoadImaged``, and after it (``None, None`` without one)."""
        from monai.transforms import Compose, LoadImaged

        transforms = list(getattr(self.transform, "transforms", [self.transform]))
        last = max((i for i, t in enumerate(transforms) if isinstance(t, LoadImaged)), default=None)
        if last is None:
            return None, None
        return Compose(transforms[: last + 1]), Compose(transforms[last + 1 :])

    def _after_loading(self):
        from monai.transforms import Compose, LoadImaged

        transforms = getattr(self.transform, "transforms", [self.transform])
        return Compose([t for t in transforms if not isinstance(t, LoadImaged)])

    def _placeholder(self, item: dict, **reasons):
        item = {k: v for k, v in item.items() if k != REFUSED}
        blank = MetaTensor(torch.zeros(1, 8, 8, dtype=torch.uint8),
                           meta={"filename_or_obj": str(item.get("image", ""))})
        out = self._after_loading()({**item, "image": blank})
        out.update({READ_ERROR: "", REFUSED: "", INPUT_WARNING: "", **reasons})
        return out

    def _guard(self, image) -> str:
        """Why the DICOM input guard refuses ``image`` ("" when it does not, or is off, or it is not a DICOM file)."""
        if not self.dicom_guard or not isinstance(image, (str, os.PathLike)) or not os.path.isfile(image):
            return ""
        if not is_dicom(image):
            return ""
        return guard_file(image) or ""

    def _transform(self, index: int):
        from monai.transforms import apply_transform

        item = dict(self.data[index])
        # refused when listed (a link out of the folder) or, unread, by the DICOM guard
        refused = item.pop(REFUSED, "") or self._guard(item.get("image"))
        if refused:
            if self.strict:
                raise ImageReadError(item.get("image", ""), refused)
            return self._placeholder(item, **{REFUSED: refused})
        warning = ""
        try:
            if self._loading is None:
                out = super()._transform(index)
            else:
                loaded = apply_transform(self._loading, item)
                degenerate = degenerate_tensor_reason(loaded["image"], self.image_size) if "image" in loaded else None
                if degenerate and self.degenerate_images == "refuse":
                    reason = degenerate_refused(degenerate)
                    if self.strict:
                        raise ImageReadError(item.get("image", ""), reason)
                    return self._placeholder(item, **{REFUSED: reason})
                if degenerate:
                    warning = degenerate_warned(degenerate)
                out = apply_transform(self._after, loaded)
        except Exception as e:
            if self.strict:
                raise
            return self._placeholder(item, **{READ_ERROR: read_error(e)})
        out.update({READ_ERROR: "", REFUSED: "", INPUT_WARNING: warning})
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
    whose ``filename_or_obj`` names the file) and batch (``read_error``, ``refused`` and
    ``input_warning``, set by :class:`InferenceDataset`). Images that could not be read, or were
    refused, get no row: they go to ``errors_file`` (``image``, ``reason``); degenerate images that
    were scored get their row and a row in ``errors_file`` too (the reason starts with
    "degenerate image, scored all the same"). The errors file is written only when there are some
    (a stale one from an earlier run is removed); each kind is counted in the final line. When no
    image at all could be scored, the run stops (the errors file names every image and its reason).

    With operating thresholds (``thresholds``, else the ``thresholds`` of the run record beside
    ``checkpoint``: ``model.json``, written after training), it also writes ``decisions_file``: the
    same rows with, per class, 1 where the probability is ``>=`` the class's threshold, else 0 (the
    probabilities file keeps its format). Without thresholds no decisions file is written (a stale
    one is removed).

    Args:
        output_file: the CSV file (its folder is created).
        classes: class names, the CSV's header after ``image``.
        errors_file: the CSV of the images that could not be read (default: ``errors.csv`` beside ``output_file``).
        thresholds: ``class -> threshold`` (every class needed), or a JSON file holding such a dict or a run
            record with ``thresholds``; ``None``: those of the run record beside ``checkpoint``, if any;
            an empty dict: no decisions.
        checkpoint: the weights file whose run record (``<name>.json``) holds the thresholds.
        decisions_file: the decisions CSV (default: ``decisions.csv`` beside ``output_file``).
    """

    def __init__(self, output_file, classes: Sequence[str], errors_file=None, thresholds=None, checkpoint=None,
                 decisions_file=None):
        self.output_file, self.classes = Path(output_file), list(classes)
        self.errors_file = Path(errors_file) if errors_file else self.output_file.with_name("errors.csv")
        self.decisions_file = Path(decisions_file) if decisions_file else self.output_file.with_name("decisions.csv")
        self.threshold_setting, self.checkpoint = thresholds, checkpoint
        self._rows: list[list] = []
        self._errors: list[list] = []
        self._counts = {READ_ERROR: 0, REFUSED: 0, INPUT_WARNING: 0}

    def attach(self, engine: Engine) -> None:
        from ..files import check_writable

        # before any image is read: a file in the way or a read-only file system is named, not "[Errno 17]"
        check_writable(self.output_file.parent, "inference output folder (output_dir)")
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._rows.clear()
        self._errors.clear()
        self._counts = dict.fromkeys(self._counts, 0)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [{}] * len(engine.state.output)
        for item, source in zip(engine.state.output, batch):
            image = str(item["image"].meta.get("filename_or_obj", ""))
            source = source if isinstance(source, dict) else {}
            skipped = next((key for key in (READ_ERROR, REFUSED) if source.get(key, "")), None)
            if skipped:
                self._counts[skipped] += 1
                self._errors.append([image, source[skipped]])
                continue
            probs = torch.as_tensor(item["pred"]).float().flatten().tolist()
            if len(probs) != len(self.classes):
                raise ValueError(f"the network gives {len(probs)} outputs but {len(self.classes)} class names are "
                                 "configured")
            self._rows.append([image] + [f"{p:.6f}" for p in probs])
            if source.get(INPUT_WARNING, ""):
                self._counts[INPUT_WARNING] += 1
                self._errors.append([image, source[INPUT_WARNING]])

    @staticmethod
    def _write_csv(path: Path, header: list, rows: list) -> None:
        from ..files import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    def thresholds(self) -> list[float] | None:
        """The threshold of every class, in class order (:func:`read_thresholds`); ``None`` without thresholds."""
        return read_thresholds(self.classes, self.threshold_setting, self.checkpoint)

    def _write(self, engine: Engine) -> None:
        from ..evaluation.operating import threshold_lines

        thresholds = self.thresholds()
        for line in threshold_lines(thresholds, self.threshold_setting, self.checkpoint):
            print(line, flush=True)
        if thresholds is not None:
            decisions = [[row[0]] + [int(float(p) >= t) for p, t in zip(row[1:], thresholds)] for row in self._rows]
            self._write_csv(self.decisions_file, ["image"] + self.classes, decisions)
            print(f"wrote decisions (probability >= the class's operating threshold) to {self.decisions_file}",
                  flush=True)
        elif self.decisions_file.is_file():
            self.decisions_file.unlink()  # from an earlier run into the same folder
        self._write_csv(self.output_file, ["image"] + self.classes, self._rows)
        if self._errors:
            self._write_csv(self.errors_file, ["image", "reason"], self._errors)
        elif self.errors_file.is_file():
            self.errors_file.unlink()  # from an earlier run into the same folder
        line = f"wrote probabilities of {len(self._rows)} image(s) to {self.output_file}"
        said = {READ_ERROR: "skipped, unreadable", REFUSED: "skipped, refused",
                INPUT_WARNING: "scored with a warning (degenerate)"}
        parts = [f"{self._counts[key]} {text}" for key, text in said.items() if self._counts[key]]
        if parts:
            line += f"; {'; '.join(parts)} (see {self.errors_file})"
        print(line, flush=True)
        if self._errors and not self._rows:
            image, reason = self._errors[0]
            raise ValueError(f"none of the {len(self._errors)} input image(s) could be read, e.g. {image}: {reason} "
                             f"(every image and its reason: {self.errors_file})")


def read_thresholds(classes: Sequence[str], thresholds=None, checkpoint=None) -> list[float] | None:
    """The operating threshold of every class, in class order, or ``None`` when there are none.

    Args:
        classes: the class names.
        thresholds: ``class -> threshold``; a JSON file holding such a dict or a run record with
            ``thresholds``; ``None``: the ``thresholds`` of the run record beside ``checkpoint``
            (``model.json`` beside ``model.pt``), if any; an empty dict: none.
        checkpoint: the weights file (it need not exist; only its record is read).

    Raises:
        ValueError: thresholds that miss a class or are not numbers in [0, 1].
    """
    from ..files import read_json
    from ..record import read_record, record_path

    where = "thresholds"
    if thresholds is None:
        if checkpoint in (None, ""):
            return None
        record = record_path(checkpoint)
        if not record.is_file():
            return None
        thresholds, where = (read_record(record) or {}).get("thresholds"), f"thresholds of {record}"
        if not thresholds:
            return None
    elif isinstance(thresholds, (str, Path)):
        where = f"thresholds file {thresholds}"
        content = read_json(thresholds, "thresholds file")
        thresholds = content.get("thresholds", content) if isinstance(content, dict) else content
    if not thresholds:
        return None
    if not isinstance(thresholds, dict):
        raise ValueError(f"{where} must be a dict class -> threshold, got {type(thresholds).__name__}")
    missing = [c for c in classes if c not in thresholds]
    if missing:
        raise ValueError(f"{where} have no threshold for classes {missing}")
    out = []
    for c in classes:
        value = thresholds[c]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{where}: the threshold of {c} must be a number in [0, 1], got {value!r}")
        out.append(float(value))
    return out
