"""DICOM chest X-rays: read with pydicom into display intensities in [0, 1], as a MONAI image reader.

A DICOM radiograph stores detector values, not what a radiologist sees. :func:`read_dicom` turns
them into the grey levels of the image as displayed, the same quantity a PNG export holds:

1. the pixel data is decoded by pydicom (uncompressed, deflated, RLE Lossless natively; JPEG
   Baseline/Extended 8-bit and JPEG 2000 through Pillow). Transfer syntaxes that need a decoder
   not installed (JPEG Lossless, JPEG-LS, HTJ2K: gdcm or pylibjpeg plugins) are refused with a
   message naming the file, the syntax and the packages that would decode it;
2. the modality LUT or rescale slope/intercept is applied;
3. the first VOI LUT, else the first window centre/width, is applied (pydicom's ``apply_voi_lut``);
4. the result is scaled to [0, 1] by its output range: the VOI LUT's bit depth, else the range
   of the stored bits (``BitsStored``, signed or not) after rescaling (what the window maps onto);
5. ``MONOCHROME1`` images (bright = low values) are inverted.

The output for a file whose pixels equal those of an 8-bit PNG is that PNG's ``pixels / 255``, so
the network sees the same input (the bundle's ``ChestXrayToTensord`` takes floats in [0, 1] as they are).

The input guard (:func:`guard_reason`, :func:`guard_file`) refuses, from the header alone, DICOM files
that are not frontal chest radiographs, the only images the model was trained on:

- ``Modality`` must be ``CR``, ``DX`` or ``RG`` (computed, digital, or digitised film radiography);
  a missing Modality is refused too (it is a required attribute);
- ``BodyPartExamined``, when present and not empty, must name the chest: ``CHEST``, ``THORAX``,
  ``TORAX`` (Spanish, as in PadChest), ``LUNG`` or ``LUNGS``, in any case, spaces and underscores ignored;
- ``ViewPosition`` must not be lateral: ``LL``, ``RL``, ``LAT``, or any value containing ``LATERAL``
  (PA, AP, decubitus views and a missing ViewPosition pass).

``$NVUM_DICOM_GUARD`` set to ``0``/``false``/``no``/``off`` turns the guard off (:func:`dicom_guard_enabled`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple

#: file name suffixes taken as DICOM without looking inside; other files are DICOM when they carry the marker.
DICOM_SUFFIXES = (".dcm", ".dicom")
#: the DICOM file marker: "DICM" after a 128-byte preamble.
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"


#: Modality values of a projection radiograph: computed (CR), digital (DX), digitised film (RG).
ALLOWED_MODALITIES = ("CR", "DX", "RG")
#: BodyPartExamined values taken as chest (upper case, spaces and underscores removed before comparing).
CHEST_BODY_PARTS = ("CHEST", "THORAX", "TORAX", "LUNG", "LUNGS")
#: ViewPosition values of a lateral view (and any value containing "LATERAL").
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL")
#: the environment variable that turns the DICOM input guard off (``0``, ``false``, ``no``, ``off``).
DICOM_GUARD_ENV = "NVUM_DICOM_GUARD"


class DicomReadError(ValueError):
    """A DICOM file that cannot be turned into an image; the message names the file and the reason."""


def is_dicom(source) -> bool:
    """Whether ``source`` (a path, or the bytes of a file) is a DICOM file (by its marker; for a missing
    file, by its suffix)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4]) == DICOM_MAGIC
    path = Path(source)
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == DICOM_MAGIC
    except OSError:
        return path.suffix.lower() in DICOM_SUFFIXES


def dicom_guard_enabled() -> bool:
    """Whether the DICOM input guard is on: yes unless ``$NVUM_DICOM_GUARD`` is ``0``, ``false``, ``no`` or
    ``off`` (any case).

    Raises:
        ValueError: another value, naming the variable.
    """
    from ..flags import as_bool

    text = os.environ.get(DICOM_GUARD_ENV, "").strip()
    if not text:
        return True
    try:
        return as_bool(text, f"${DICOM_GUARD_ENV}")
    except ValueError:
        raise ValueError(f"${DICOM_GUARD_ENV} must be 1 (guard DICOM inputs, the default) or 0 (let every DICOM "
                         f"image through), got {text.lower()!r}") from None


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, None)
    return "" if value is None else str(value).strip()


def guard_reason(ds) -> str | None:
    """Why a DICOM dataset is not a frontal chest radiograph (``None`` when it may be one), from its header.

    The rules are the module docstring's: Modality CR, DX or RG; BodyPartExamined absent or chest;
    ViewPosition not lateral. Several broken rules are joined with ``"; "``.
    """
    reasons = []
    modality = _text(ds, "Modality").upper()
    expected = ", ".join(ALLOWED_MODALITIES[:-1]) + " or " + ALLOWED_MODALITIES[-1]
    if modality not in ALLOWED_MODALITIES:
        reasons.append(f"not a chest radiograph: Modality {modality or 'missing'} (expected {expected})")
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part.upper().replace(" ", "").replace("_", "") not in CHEST_BODY_PARTS:
        reasons.append(f"not a chest radiograph: BodyPartExamined {body_part} (expected CHEST or THORAX)")
    view = _text(ds, "ViewPosition")
    if view.upper() in LATERAL_VIEWS or "LATERAL" in view.upper():
        reasons.append(f"not a frontal chest radiograph: ViewPosition {view} is a lateral view (the model was "
                       "trained on frontal PA/AP views)")
    return "; ".join(reasons) or None


def guard_file(source) -> str | None:
    """:func:`guard_reason` of a DICOM file (a path, or the bytes of a file), reading its header only
    (``stop_before_pixels``). ``None`` when the header cannot be read: :func:`read_dicom` then says why."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else str(source),
            stop_before_pixels=True,
        )
    except Exception:  # an unreadable header is read_dicom's to explain
        return None
    return guard_reason(ds)


def _decoder_problem(ds, name: str) -> str | None:
    """Why the pixel data of ``ds`` cannot be decoded here (``None`` when it can)."""
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return None
    try:  # pydicom 3
        from pydicom.pixels.decoders.base import get_decoder

        decoder = get_decoder(syntax)
        if decoder.is_available:
            return None
        missing = "; ".join(decoder.missing_dependencies)
    except ImportError:  # pydicom 2
        import pydicom.config

        handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(syntax)]
        if any(h.is_available() for h in handlers):
            return None
        missing = ", ".join(getattr(h, "HANDLER_NAME", str(h)) for h in handlers) or "no handler"
    return (
        f"{name}: transfer syntax {syntax.name} ({syntax}) cannot be decoded here (needs one of: {missing}); "
        "convert the file to an uncompressed, RLE, JPEG Baseline or JPEG 2000 DICOM, or to PNG"
    )


def _modality_range(ds) -> tuple[float, float]:
    """The range of the values after the modality LUT or rescale: what a window maps onto (as pydicom does)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    low, high = (
        (0.0, 2.0**bits - 1)
        if int(ds.get("PixelRepresentation", 0)) == 0
        else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    )
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


def _display_range(ds) -> tuple[float, float]:
    """The output range of the VOI transform ``apply_voi_lut`` applies (LUT first, else window, else none)."""
    if ds.get("VOILUTSequence"):
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    return _modality_range(ds)


def _apply_luts(arr: np.ndarray, ds) -> np.ndarray:
    try:  # pydicom 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    arr = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        arr = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
    return np.asarray(arr, dtype=np.float64)


def _sop_class(ds) -> str:
    """``" (SOP class <name>)"`` of a dataset, or ``""`` when it names none."""
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return f" (SOP class {getattr(uid, 'name', uid)})" if uid else ""


def read_dicom(source, name: str | None = None) -> tuple[np.ndarray, dict]:
    """Read a DICOM radiograph into display intensities (see the module docstring).

    Args:
        source: a file path, or the bytes of a file.
        name: how to call the input in error messages (default: the path).

    Returns:
        ``(array, meta)``: ``(1, H, W)`` float32 in [0, 1] (``(3, H, W)`` for RGB data), and a metadata
        dict (``spatial_shape``, ``original_channel_dim``, the photometric interpretation, bit depths,
        the VOI transform applied).

    Raises:
        DicomReadError: not a DICOM file, no pixel data, several frames, an unsupported photometric
            interpretation, or a transfer syntax that cannot be decoded here.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = name or ("DICOM bytes" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    try:
        ds = pydicom.dcmread(
            io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
        )
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DicomReadError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise DicomReadError(f"{name}: the DICOM file holds no image: it has no pixel data element (7FE0,0010)"
                             f"{_sop_class(ds)}; send the radiograph's image file")
    problem = _decoder_problem(ds, name)
    if problem:
        raise DicomReadError(problem)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomReadError(f"{name}: a DICOM file with {frames} frames; a radiograph has one")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        pixels = ds.pixel_array
    except Exception as e:  # decoders raise many types
        raise DicomReadError(
            f"{name}: cannot decode the pixel data ({ds.file_meta.TransferSyntaxUID.name}): {type(e).__name__}: {e}"
        ) from None
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        low, high = _display_range(ds)
        values = (_apply_luts(pixels, ds) - low) / max(high - low, 1e-12)
        values = np.clip(values, 0.0, 1.0)
        if photometric == "MONOCHROME1":
            values = 1.0 - values
        array = values[None]
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):  # pydicom gives RGB
        array = np.moveaxis(np.asarray(pixels, dtype=np.float64), -1, 0) / (2.0 ** int(ds.BitsStored) - 1)
    else:
        raise DicomReadError(
            f"{name}: photometric interpretation {photometric or 'missing'} is not supported "
            "(MONOCHROME1, MONOCHROME2 or RGB)"
        )
    meta = {
        "spatial_shape": np.asarray(array.shape[1:]),
        "original_channel_dim": 0,
        "PhotometricInterpretation": photometric,
        "BitsStored": int(ds.BitsStored),
        "voi": "lut" if ds.get("VOILUTSequence") else "window" if "WindowCenter" in ds else "none",
    }
    return array.astype(np.float32), meta


class ChestXrayDicomReader(ImageReader):
    """MONAI image reader of DICOM radiographs (:func:`read_dicom`), for ``LoadImage``'s reader list.

    Listed after ``PILReader`` in the bundle's ``load_image`` it is tried first; a file that is not
    DICOM is left to the next reader at the cost of reading its first 132 bytes. The config names it as
    a string (``"reader": ["PILReader", "custom.ChestXrayDicomReader"]``), so ``LoadImage`` builds it with
    its own reader options, which are PIL's (``reverse_indexing``) and are ignored here.
    """

    def __init__(self, **reader_options):
        super().__init__()

    def verify_suffix(self, filename) -> bool:
        return all(is_dicom(f) for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        files = ensure_tuple(data)
        if len(files) != 1:
            raise DicomReadError(f"one DICOM file per image, got {len(files)}: {files}")
        if not is_dicom(files[0]):
            raise DicomReadError(f"{files[0]} is not a DICOM file")
        return read_dicom(files[0])

    def get_data(self, img):
        array, meta = img
        return array, dict(meta)
