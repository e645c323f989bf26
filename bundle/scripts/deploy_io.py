"""Parts of the MONAI Deploy example application that do not need the App SDK.

- :func:`list_files`, :func:`list_images`, :func:`load_image`: the image loader (PNG, JPEG and DICOM). It reads a
  file exactly
  as the bundle's ``inference.json`` does (MONAI ``LoadImage`` with ``PILReader`` or the bundle's
  DICOM reader, no axis swap, channel first, the file's own dtype), because the SDK's bundle
  operator drops the config's ``LoadImaged``.
- :func:`select_images`: the series selection. Every file given is scored or left out with its reason: a file
  that is not a PNG, JPEG or DICOM image (by its content, whatever its name) is left out, and so is a DICOM file
  whose header says it is not a frontal chest
  radiograph (Modality not CR/DX/RG, BodyPartExamined not chest, a lateral ViewPosition:
  ``custom.data.dicom.guard_reason``, read with ``stop_before_pixels``) is left out with its reason, as the
  SDK's ``DICOMSeriesSelectorOperator`` leaves out the series its rules on Modality and BodyPartExamined do
  not match; ``$NVUM_DICOM_GUARD=0`` keeps every file.
- :func:`format_probabilities`: multi-label output handling. The SDK operator's stock handling of
  a ``"probabilities"`` output turns every value into a class index with ``int()`` (so every
  channel of a sigmoid output is labelled with class 0); this names each probability instead.
- :func:`write_results`: the JSON written by the application.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
#: the file names read as images; others are left out with a reason (a DICOM file without a suffix is read too).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
RESULTS_FILE = "probabilities.json"


def _is_dicom(path: Path) -> bool:
    from custom.data.dicom import is_dicom

    return is_dicom(path)


def _magic(path: Path) -> str | None:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's first bytes, ``None`` for anything else."""
    with open(path, "rb") as f:
        head = f.read(len(PNG_MAGIC))
    if head == PNG_MAGIC:
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    return "dicom" if _is_dicom(path) else None


def list_files(input_path) -> list[Path]:
    """The file ``input_path``, or every file of the folder ``input_path`` (recursively, sorted; ``DICOMDIR``, an
    index, left out): what the application is given, each of which it scores or names with a reason.

    Raises:
        FileNotFoundError: the path does not exist or the folder holds no file.
    """
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    if not files:
        raise FileNotFoundError(f"no file found under {path}")
    return files


def list_images(input_path) -> list[Path]:
    """The image file ``input_path``, or the PNG, JPEG and DICOM files of the folder ``input_path`` (recursively,
    sorted; by their suffix, DICOM files without a suffix by their marker).

    Raises:
        FileNotFoundError: the path does not exist or the folder holds no PNG, JPEG or DICOM file.
    """
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    files = [p for p in list_files(path) if p.suffix.lower() in IMAGE_SUFFIXES or (p.suffix == "" and _is_dicom(p))]
    if not files:
        raise FileNotFoundError(f"no PNG, JPEG or DICOM file found under {path}")
    return files


def select_images(files, dicom_guard: bool | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images to infer on, and those left out: DICOM files refused by the bundle's guard, files that are not
    PNG, JPEG or DICOM images (whatever the guard's switch), and files whose name says another format than
    their content (a ``.png`` that is not a PNG or JPEG, a ``.dcm`` that is not DICOM).

    Args:
        files: paths (e.g. from :func:`list_files`); PNG and JPEG files are kept (their header says nothing).
        dicom_guard: apply the guard; default (``None``): on unless ``$NVUM_DICOM_GUARD`` is ``0``.

    Returns:
        ``(selected, refused)``: the kept paths in order, and ``(path, reason)`` for each file left out.
    """
    from custom.data.dicom import dicom_guard_enabled, guard_file

    guard = dicom_guard_enabled() if dicom_guard is None else bool(dicom_guard)
    selected, refused = [], []
    for path in map(Path, files):
        kind, suffix = (_magic(path) if path.is_file() else None), path.suffix.lower()
        if suffix in (".dcm", ".dicom") and path.is_file() and kind != "dicom":
            reason = f"not a DICOM file (named {path.suffix} but without the DICOM marker 'DICM' at byte 128)"
        elif kind is None:
            reason = ("not a PNG, JPEG or DICOM image" + (f" (named {path.suffix})" if path.suffix else "")
                      if path.is_file() else "not a file")
        else:
            reason = guard_file(path) if guard and kind == "dicom" else None
        if reason:
            refused.append((path, reason))
        else:
            selected.append(path)
    return selected, refused


def load_image(path) -> tuple[np.ndarray, dict]:
    """Read a PNG, JPEG or DICOM chest X-ray as ``inference.json`` does.

    Returns:
        ``(array, metadata)``: the channel-first ``(C, H, W)`` array (grey: C = 1) with the file's
        dtype (DICOM: float32 display intensities in [0, 1]), and MONAI's metadata of the file
        (``filename_or_obj``, ``spatial_shape``, ...).

    Raises:
        FileNotFoundError: missing file; ValueError: not a PNG, JPEG or DICOM file.
    """
    from monai.transforms import LoadImage

    from custom.data.dicom import ChestXrayDicomReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    kind = _magic(path)
    if kind is None:
        raise ValueError(f"not a PNG, JPEG or DICOM file: {path}")
    reader = ChestXrayDicomReader() if kind == "dicom" else "PILReader"
    loader = LoadImage(reader=reader, reverse_indexing=False, image_only=True, ensure_channel_first=True, dtype=None)
    image = loader(str(path))
    return np.asarray(image.array), dict(image.meta)


def format_probabilities(probabilities, channel_def: dict) -> dict[str, float]:
    """Name each probability of a multi-label output.

    Args:
        probabilities: the ``C`` sigmoid outputs of one image (tensor or array; a leading batch
            axis of size 1 is accepted).
        channel_def: the metadata's output ``channel_def``, ``{"0": "Atelectasis", ...}``.

    Returns:
        ``{class name: probability}`` in channel order.

    Raises:
        ValueError: the number of values differs from the number of channels, a channel has no
            name, or a value is not a probability.
    """
    if hasattr(probabilities, "detach"):
        probabilities = probabilities.detach().cpu().numpy()
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if len(values) != len(channel_def):
        raise ValueError(f"the network gives {len(values)} outputs but channel_def names {len(channel_def)} classes")
    missing = [str(i) for i in range(len(values)) if str(i) not in channel_def]
    if missing:
        raise ValueError(f"channel_def has no name for channel(s) {missing}")
    bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    if bad:
        raise ValueError(f"output channel(s) {bad} are not probabilities in [0, 1] (values {values[bad].tolist()}); "
                         "is the sigmoid in the postprocessing?")
    return {str(channel_def[str(i)]): float(v) for i, v in enumerate(values)}


def write_results(results: dict, output_folder) -> Path:
    """Write ``{image name: {class: probability}}`` to ``<output_folder>/probabilities.json``."""
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    return path
