"""Decoding the served model's input: the encoded image of one row (PNG, JPEG, DICOM or ``.npy`` bytes, or their
base64 text) into the array ``LoadImaged`` gives for a file, and its pixel count from the header alone.

Every size is checked from the header before pixels are decoded or allocated: an image of more than
:data:`MAX_PIXELS` pixels is refused (:func:`decode_image`), and :func:`image_pixels` gives the count the
served model's per-request pixel budget adds up (:mod:`custom.serving.pyfunc`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image

from ..data.dicom import dicom_guard_enabled, guard_file, is_dicom, read_dicom

NPY_MAGIC = b"\x93NUMPY"
#: the largest image decoded, in pixels (height x width, x frames for DICOM), for PNG/JPEG, ``.npy`` and DICOM
#: alike: Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485, e.g. 9459 x 9459).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
#: the start of a data URI with base64 data (``data:image/png;base64,``), accepted before the image's base64.
DATA_URI = re.compile(r"data:[\w.+/-]*(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def image_bytes(data, name: str = "image") -> bytes:
    """The bytes of one row: ``bytes`` as they are, base64 text (a data URI's too) decoded.

    Raises:
        TypeError, ValueError: naming ``name``: not bytes, invalid base64 (a file path is called one).
    """
    if isinstance(data, str):
        text = data.strip()
        uri = DATA_URI.match(text)  # a browser's data URI: its base64 part is the image
        shown = text if len(text) <= 60 else text[:57] + "..."
        if text[:5].lower() == "data:" and not uri:
            raise ValueError(f"{name}: a data URI must hold base64 (data:<type>;base64,<data>), got {shown!r}")
        try:
            data = base64.b64decode("".join(text[uri.end() if uri else 0:].split()),
                                    validate=True)  # line breaks of `base64` without -w0 are fine
        except (binascii.Error, ValueError):
            hint = ""
            if uri:
                hint = " (a data URI whose data after ';base64,' is not valid base64)"
            elif _looks_like_path(text):
                hint = " (it looks like a file path: the served model does not read files)"
            raise ValueError(f"{name}: expected the image's bytes (PNG, JPEG, DICOM or .npy), base64-encoded, e.g. "
                             f"$(base64 -w0 image.png); got the text {shown!r}{hint}") from None
    if isinstance(data, (bytearray, memoryview, np.bytes_)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"{name}: expected the bytes of a PNG, JPEG, DICOM or .npy file, got {type(data).__name__}")
    return data


def image_pixels(data) -> int | None:
    """The pixels (height x width, x frames for DICOM) the decoder would give for one row, from the header alone;
    ``None`` when the header does not say (not an image, unreadable: the decoder names what is wrong)."""
    try:
        data = image_bytes(data)
        if is_dicom(data):
            rows, columns, frames = _dicom_shape(data)
            return rows * columns * frames
        if data.startswith(NPY_MAGIC):
            shape = _npy_header(data, "image")[0]
            return int(shape[-2]) * int(shape[-1]) if len(shape) in (2, 3) else None
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return int(img.width) * int(img.height)
    except Exception:  # anything the decoder will name (DecompressionBombError included)
        return None


def decode_image(data, name: str = "image", dicom_guard: bool | None = None) -> np.ndarray:
    """Decode one encoded image into a channel-first array, as the bundle's ``LoadImaged`` does.

    Args:
        data: bytes of a PNG/JPEG (any mode PIL reads: grey, 16-bit grey, RGB, RGBA), of a DICOM
            file (read by :func:`custom.data.dicom.read_dicom`: display intensities in [0, 1]) or
            of a ``.npy`` file; a base64 ``str`` of any is accepted too.
        name: how to call the input in error messages (e.g. ``row 3``).
        dicom_guard: refuse a DICOM file that is not a frontal chest radiograph (from its header:
            :func:`custom.data.dicom.guard_reason`); default (``None``): on unless ``$NVUM_DICOM_GUARD`` is ``0``.

    Returns:
        ``(C, H, W)`` array with the file's own dtype (``LoadImaged(PILReader, reverse_indexing=False,
        ensure_channel_first=True, dtype=None)`` gives the same array for a file).

    Raises:
        TypeError, ValueError: not bytes, invalid base64, not a decodable image, bad array shape, a DICOM file
            refused by the guard.
    """
    data = image_bytes(data, name)
    if is_dicom(data):
        if dicom_guard_enabled() if dicom_guard is None else dicom_guard:
            reason = guard_file(data)
            if reason:
                raise ValueError(f"{name}: {reason}")
        _check_dicom_size(data, name)
        return read_dicom(data, name)[0]
    if data.startswith(NPY_MAGIC):
        return _load_npy(data, name)
    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(name, "image", img.height, img.width)  # from the header: nothing decoded yet
            img.load()
            arr = np.array(img)  # a writable copy
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses while opening
        found = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise ValueError(f"{name}: the image has {count}, over the limit of {MAX_PIXELS} pixels per image "
                         "(refused before decoding: a possible decompression bomb)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name}: not a readable PNG/JPEG image ({e})") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _check_pixels(name: str, what: str, height: int, width: int, frames: int = 1) -> None:
    """ValueError naming the pixel count and :data:`MAX_PIXELS` when an image is over it."""
    count = int(height) * int(width) * int(frames)
    if count > MAX_PIXELS:
        size = f"{height} x {width}" + (f" x {frames} frames" if frames != 1 else "")
        raise ValueError(f"{name}: the {what} has {count} pixels ({size}), over the limit of {MAX_PIXELS} pixels "
                         "per image (refused before decoding: a possible decompression bomb)")


def _dicom_shape(data: bytes) -> tuple[int, int, int]:
    """``(Rows, Columns, NumberOfFrames)`` of a DICOM file's header (its pixels are not read)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), int(ds.get("NumberOfFrames", 1) or 1)


def _check_dicom_size(data: bytes, name: str) -> None:
    """Refuse a DICOM file whose Rows x Columns x NumberOfFrames is over the limit, from its header alone."""
    try:
        rows, columns, frames = _dicom_shape(data)
    except Exception:  # an unreadable header: read_dicom says what is wrong with it
        return
    _check_pixels(name, "DICOM image", rows, columns, frames)


def _npy_header(data: bytes, name: str) -> tuple:
    """``(shape, dtype, file positioned at the pixels)`` of ``.npy`` bytes (ValueError naming ``name``)."""
    fmt = np.lib.format
    f = io.BytesIO(data)
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
    except ValueError as e:
        raise ValueError(f"{name}: unreadable .npy data: {e}") from None
    return shape, dtype, f


def _load_npy(data: bytes, name: str) -> np.ndarray:
    """The array of ``.npy`` bytes; its shape, type and size checked from the header before anything is loaded."""
    shape, dtype, f = _npy_header(data, name)
    full = shape if len(shape) != 2 else (1, *shape)
    if len(full) != 3 or full[0] not in (1, 3, 4) or dtype.kind not in "uif":
        raise ValueError(f"{name}: a .npy image must be a numeric (H, W) or (C, H, W) array with C in 1, 3, 4; "
                         f"got {dtype} {tuple(shape)}")
    _check_pixels(name, ".npy array", full[1], full[2])
    needed = int(np.prod(full)) * dtype.itemsize
    present = len(data) - f.tell()
    if present < needed:
        raise ValueError(f"{name}: unreadable .npy data: truncated ({present} bytes of pixels, the header's "
                         f"{dtype} {tuple(shape)} needs {needed})")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{name}: unreadable .npy data: {e}") from None
    arr = arr.reshape(full)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name}: the pixel array holds {bad} NaN or infinite value(s); pixels must be finite "
                         "numbers")
    if min(arr.shape[1:]) < 1:
        raise ValueError(f"{name}: the pixel array is empty ({arr.shape})")
    return arr


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or "." in text[-6:] or text.startswith("~")


def encode_array(array) -> bytes:
    """The ``.npy`` bytes of a pixel array, to send an in-memory image to the model."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()
