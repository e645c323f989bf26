"""The MLflow pyfunc model of the bundle: encoded images in, per-class probabilities out.

The served model takes a table with one column, ``image``: the bytes of a PNG, JPEG or DICOM
file, or of a NumPy ``.npy`` file holding a pixel array (``(H, W)`` grey or ``(C, H, W)`` with C in
1, 3, 4; finite values only). Over REST send them base64-encoded, e.g. ``{"dataframe_split":
{"columns": ["image"], "data": [["iVBORw0KGgo..."]]}}``; in Python pass ``bytes`` (or the base64 text). The
column's MLflow type is ``string`` (not ``binary``) so that the model itself decodes the base64 text
and can say what is wrong with it: with ``binary`` MLflow decodes it before the model sees it and
answers a file path with "Incorrect padding". File paths are deliberately not accepted: a served
model must not read files of the server on a client's request.

It returns a ``pandas.DataFrame`` with one row per image and one column per class (the class
names of the bundle's ``inference.json``), holding sigmoid probabilities; when ``inference.json``
holds operating ``thresholds`` (the deployable bundle of a trained run does), one more column per
class follows them, ``<class>_positive``: 1 where the probability is ``>=`` the class's threshold, else 0.
Preprocessing and postprocessing are those of ``inference.json`` (its image loader replaced by the decoder below),
and the network is the bundle's TorchScript export, so the model predicts what
``inference.json`` predicts.

A DICOM file whose header says it is not a frontal chest radiograph (Modality not CR/DX/RG,
BodyPartExamined not chest, a lateral ViewPosition: :func:`custom.data.dicom.guard_reason`) is a bad
row too, with the reason; ``NVUM_DICOM_GUARD=0`` in the server's environment lets such files through.

An image unlike the training images (the out-of-distribution gate, :mod:`custom.evaluation.ood`: the
Mahalanobis distance of its pooled features over the threshold stored with the model, artifact ``ood``) is a
bad row too, with the reason ("row 2: not like the training images: distance 412.3 > 97.1"): one such image
makes the whole request an HTTP 400, as any bad row does, so that no answer is ever given for it. A caller who would
rather not lose a batch for one image passes the parameter ``ood="flag"`` (``{"params": {"ood": "flag"}}`` over
REST): every row then gets two more columns, ``ood_distance`` and ``in_distribution`` (1 or 0), and the rows out
of distribution get no probability or decision (NaN). ``NVUM_OOD_GATE=0`` in the server's environment turns the
gate off.

A request with an input that is not an image is refused as a whole with
``MlflowException(..., INVALID_PARAMETER_VALUE)``, which the scoring server answers with HTTP 400
and a message naming every bad row and its reason. So is an image of more than :data:`MAX_PIXELS`
pixels (Pillow's decompression-bomb limit, for every input type), found from the file's header before
its pixels are decoded or allocated.

Limits of a request, checked before anything is decoded (HTTP 400 naming the limit and the
variable that sets it): at most :data:`MAX_ROWS` rows (``$NVUM_MAX_ROWS``) and at most
:data:`MAX_REQUEST_BYTES` bytes of encoded images in all (``$NVUM_MAX_REQUEST_BYTES``; the length
of the base64 text, or of the bytes). The rows are decoded and predicted :data:`CHUNK_ROWS` at a time,
so the memory a request takes beyond its own data is bounded by a chunk, and freed heap memory is
handed back to the system after each request.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import io
import os
import re
import sys

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.dicom import dicom_guard_enabled, guard_file, is_dicom, read_dicom
from ..evaluation.ood import FeatureDistance, logits_and_features, ood_gate_enabled
from .loaders import TorchScriptRunner

#: the input column of the pyfunc model.
IMAGE_COLUMN = "image"
#: suffix of the decision column of a class (``<class>_positive``), returned when the model has thresholds.
POSITIVE_SUFFIX = "_positive"
NPY_MAGIC = b"\x93NUMPY"
#: the largest image decoded, in pixels (height x width, x frames for DICOM), for PNG/JPEG, ``.npy`` and DICOM
#: alike: Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485, e.g. 9459 x 9459).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
#: the most rows (images) of one request; ``$NVUM_MAX_ROWS`` sets another.
MAX_ROWS = 256
#: the most bytes of encoded images (base64 text or bytes, all rows together) of one request;
#: ``$NVUM_MAX_REQUEST_BYTES`` sets another.
MAX_REQUEST_BYTES = 256 * 2**20
#: the environment variables of the request limits.
MAX_ROWS_ENV, MAX_REQUEST_BYTES_ENV = "NVUM_MAX_ROWS", "NVUM_MAX_REQUEST_BYTES"
#: rows decoded and predicted at a time (the memory a request takes beyond its own data).
CHUNK_ROWS = 64
#: the columns added with the parameter ``ood="flag"``.
DISTANCE_COLUMN, IN_DISTRIBUTION_COLUMN = "ood_distance", "in_distribution"
#: the values of the parameter ``ood``: refuse the request (HTTP 400), or flag the rows.
OOD_MODES = ("refuse", "flag")


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


def _check_dicom_size(data: bytes, name: str) -> None:
    """Refuse a DICOM file whose Rows x Columns x NumberOfFrames is over the limit, from its header alone."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # an unreadable header: read_dicom says what is wrong with it
        return
    _check_pixels(name, "DICOM image", rows, columns, frames)


def _load_npy(data: bytes, name: str) -> np.ndarray:
    """The array of ``.npy`` bytes; its shape, type and size checked from the header before anything is loaded."""
    fmt = np.lib.format
    f = io.BytesIO(data)
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
    except ValueError as e:
        raise ValueError(f"{name}: unreadable .npy data: {e}") from None
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


#: the start of a data URI with base64 data (``data:image/png;base64,``), accepted before the image's base64.
DATA_URI = re.compile(r"data:[\w.+/-]*(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or "." in text[-6:] or text.startswith("~")


def encode_array(array) -> bytes:
    """The ``.npy`` bytes of a pixel array, to send an in-memory image to the model."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _images(model_input) -> list:
    """The encoded images of a pyfunc input (DataFrame, dict of columns, or list of rows)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a column '{IMAGE_COLUMN}' (got columns {list(model_input.columns)})")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise ValueError(f"the input needs a key '{IMAGE_COLUMN}' (got keys {list(model_input)})")
        value = model_input[IMAGE_COLUMN]
        return list(value) if isinstance(value, (list, tuple, np.ndarray, pd.Series)) else [value]
    if isinstance(model_input, (list, tuple)):
        return [row[IMAGE_COLUMN] if isinstance(row, dict) else row for row in model_input]
    raise TypeError(f"unsupported input type {type(model_input).__name__}: give a DataFrame with an '{IMAGE_COLUMN}' "
                    "column")


def request_limits() -> tuple[int, int]:
    """``(rows, bytes)``: the request limits, :data:`MAX_ROWS` and :data:`MAX_REQUEST_BYTES` unless
    ``$NVUM_MAX_ROWS`` / ``$NVUM_MAX_REQUEST_BYTES`` set others (positive integers; ValueError naming the
    variable otherwise)."""
    limits = []
    for env, default in ((MAX_ROWS_ENV, MAX_ROWS), (MAX_REQUEST_BYTES_ENV, MAX_REQUEST_BYTES)):
        text = os.environ.get(env, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"${env} must be a positive whole number, got {text!r}")
        limits.append(value)
    return limits[0], limits[1]


def _encoded_size(data) -> int:
    if isinstance(data, (str, bytes, bytearray, np.bytes_)):
        return len(data)
    if isinstance(data, memoryview):
        return data.nbytes
    return 0  # not an image: the decoder names the row


def release_memory() -> None:
    """Hand the heap's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


class ChestXrayClassifier(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of the exported bundle (see the module docstring for input and output).

    Artifacts (set by :func:`custom.deploy.registry.log_pyfunc_model`): ``model`` (the TorchScript file)
    and ``inference_config`` (the bundle's ``inference.json``).

    Args:
        batch_size: images per forward pass.
        chunk_rows: rows decoded and predicted at a time (default :data:`CHUNK_ROWS`).
    """

    def __init__(self, batch_size: int = 64, chunk_rows: int = CHUNK_ROWS):
        self.batch_size = int(batch_size)
        self.chunk_rows = int(chunk_rows)

    def load_context(self, context) -> None:
        from monai.bundle import ConfigParser
        from monai.transforms import Compose, LoadImaged

        request_limits()  # a bad $NVUM_MAX_ROWS / $NVUM_MAX_REQUEST_BYTES stops the server at start
        dicom_guard_enabled()  # so does a bad $NVUM_DICOM_GUARD
        parser = ConfigParser()
        parser.read_config(context.artifacts["inference_config"])
        self.classes = [str(c) for c in parser.get_parsed_content("classes")]
        pre = parser.get_parsed_content("preprocessing")
        self.preprocess = Compose([t for t in pre.transforms if not isinstance(t, LoadImaged)])
        self.postprocess = parser.get_parsed_content("postprocessing")
        from .inference import read_thresholds

        self.thresholds = read_thresholds(self.classes, parser.get("thresholds") or {})
        from ..evaluation.operating import threshold_lines

        for line in threshold_lines(self.thresholds, notes=parser.get("threshold_notes"),
                                    what=f"<class>{POSITIVE_SUFFIX} columns"):  # in the server's log
            print(line.replace("the settings", "the model's inference.json"), file=sys.stderr, flush=True)
        self.model = TorchScriptRunner(torch.jit.load(context.artifacts["model"], map_location="cpu")).eval()
        self.ood = None
        if ood_gate_enabled() and context.artifacts.get("ood"):
            self.ood = FeatureDistance.load(context.artifacts["ood"])

    def _images(self, model_input) -> list:
        """The encoded images of a request within its limits; :class:`MlflowException` (HTTP 400) otherwise."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            images = _images(model_input)
        except (TypeError, ValueError) as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        max_rows, max_bytes = request_limits()
        if len(images) > max_rows:
            raise MlflowException(f"the request has {len(images)} rows, over the limit of {max_rows} rows per request "
                                  f"(${MAX_ROWS_ENV} on the server sets it); send the images in several requests",
                                  error_code=INVALID_PARAMETER_VALUE)
        total = sum(_encoded_size(data) for data in images)
        if total > max_bytes:
            raise MlflowException(f"the request's images take {total} bytes encoded, over the limit of {max_bytes} "
                                  f"bytes per request (${MAX_REQUEST_BYTES_ENV} on the server sets it); send the "
                                  "images in several requests", error_code=INVALID_PARAMETER_VALUE)
        return images

    def _tensors(self, images: list, first: int, errors: list) -> list:
        """The preprocessed images of rows ``first``, ``first + 1``, ...; the reasons of bad rows go to ``errors``."""
        tensors = []
        for i, data in enumerate(images, first):
            try:
                tensors.append(torch.as_tensor(self.preprocess({IMAGE_COLUMN: decode_image(data,
                                                                                           f"row {i}")})[IMAGE_COLUMN]))
            except (TypeError, ValueError) as e:
                errors.append(str(e))
            except Exception as e:  # e.g. an array the preprocessing cannot take
                errors.append(f"row {i}: {type(e).__name__}: {e}")
        return tensors

    def _probabilities(self, tensors: list, distances: list | None = None) -> list:
        """The probabilities of ``tensors``; with a gate, their distances are appended to ``distances``."""
        probs = []
        gate = getattr(self, "ood", None)  # (models pickled before the gate: none)
        for start in range(0, len(tensors), self.batch_size):
            batch = torch.stack(tensors[start : start + self.batch_size]).float()
            if gate is None:
                logits = self.model(batch)
            else:
                logits, features = logits_and_features(self.model, batch)
                distances += list(gate.distance(features.numpy()))
            if logits.ndim != 2 or logits.shape[1] != len(self.classes):
                raise ValueError(f"the network gives outputs of shape {tuple(logits.shape)} but {len(self.classes)} "
                                 "classes are configured")
            probs += [torch.as_tensor(self.postprocess({"pred": z})["pred"]).float() for z in logits]
        return probs

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # (the DataFrame hint is what MLflow hands over; with it MLflow infers nothing from the hint and,
        # unlike without one, does not warn on import that the method has no type hints)
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        images = self._images(model_input)
        mode = (params or {}).get("ood") or "refuse"
        if mode not in OOD_MODES:
            raise MlflowException(f"the parameter ood must be one of {OOD_MODES}, got {mode!r}",
                                  error_code=INVALID_PARAMETER_VALUE)
        chunk = max(1, int(getattr(self, "chunk_rows", CHUNK_ROWS)))  # (models pickled before chunk_rows: default)
        probs, errors, distances = [], [], []
        try:
            for start in range(0, len(images), chunk):
                tensors = self._tensors(images[start : start + chunk], start, errors)
                if not errors:  # after a bad row the rest is only decoded, to name every bad row
                    probs += self._probabilities(tensors, distances)
                del tensors
        finally:
            release_memory()
        gate = getattr(self, "ood", None)
        if gate is not None and mode == "refuse" and not errors:
            errors = [f"row {i}: {gate.reason(d)} (the parameter ood='flag' answers with a column instead; "
                      "NVUM_OOD_GATE=0 on the server turns the gate off)"
                      for i, d in enumerate(distances) if gate.reason(d)]
        if errors:
            more = f" (and {len(errors) - 1} more bad row(s): {'; '.join(errors[1:10])})" if len(errors) > 1 else ""
            raise MlflowException(f"{errors[0]}{more}", error_code=INVALID_PARAMETER_VALUE)
        values = torch.stack(probs).numpy() if probs else np.zeros((0, len(self.classes)), np.float32)
        out = pd.DataFrame(values.astype(np.float64), columns=self.classes)
        thresholds = getattr(self, "thresholds", None)  # (models pickled before thresholds: none)
        if thresholds:
            for cls, threshold in zip(self.classes, thresholds):
                out[f"{cls}{POSITIVE_SUFFIX}"] = (out[cls] >= threshold).astype(np.int64)
        if gate is not None and mode == "flag":
            inside = np.array([not gate.reason(d) for d in distances], dtype=bool)
            out = out.astype(np.float64)
            out.loc[~inside, :] = np.nan  # no answer for an image unlike the training images
            out[DISTANCE_COLUMN] = np.asarray(distances, dtype=np.float64)
            out[IN_DISTRIBUTION_COLUMN] = inside.astype(np.int64)
        return out
