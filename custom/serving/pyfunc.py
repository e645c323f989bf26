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
names of the bundle's ``inference.json``), holding sigmoid probabilities. Preprocessing and
postprocessing are those of ``inference.json`` (its image loader replaced by the decoder below),
and the network is the bundle's TorchScript export, so the model predicts what
``inference.json`` predicts.

A request with an input that is not an image is refused as a whole with
``MlflowException(..., INVALID_PARAMETER_VALUE)``, which the scoring server answers with HTTP 400
and a message naming every bad row and its reason.
"""

from __future__ import annotations

import base64
import binascii
import io

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from ..data.dicom import is_dicom, read_dicom
from .loaders import TorchScriptRunner

#: the input column of the pyfunc model.
IMAGE_COLUMN = "image"
NPY_MAGIC = b"\x93NUMPY"


def decode_image(data, name: str = "image") -> np.ndarray:
    """Decode one encoded image into a channel-first array, as the bundle's ``LoadImaged`` does.

    Args:
        data: bytes of a PNG/JPEG (any mode PIL reads: grey, 16-bit grey, RGB, RGBA), of a DICOM
            file (read by :func:`custom.data.dicom.read_dicom`: display intensities in [0, 1]) or
            of a ``.npy`` file; a base64 ``str`` of any is accepted too.
        name: how to call the input in error messages (e.g. ``row 3``).

    Returns:
        ``(C, H, W)`` array with the file's own dtype (``LoadImaged(PILReader, reverse_indexing=False,
        ensure_channel_first=True, dtype=None)`` gives the same array for a file).

    Raises:
        TypeError, ValueError: not bytes, invalid base64, not a decodable image, bad array shape.
    """
    if isinstance(data, str):
        text = data.strip()
        try:
            data = base64.b64decode("".join(text.split()),
                                    validate=True)  # line breaks of `base64` without -w0 are fine
        except (binascii.Error, ValueError):
            shown = text if len(text) <= 60 else text[:57] + "..."
            hint = ""
            if _looks_like_path(text):
                hint = " (it looks like a file path: the served model does not read files)"
            raise ValueError(f"{name}: expected the image's bytes (PNG, JPEG, DICOM or .npy), base64-encoded, e.g. "
                             f"$(base64 -w0 image.png); got the text {shown!r}{hint}") from None
    if isinstance(data, (bytearray, memoryview, np.bytes_)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"{name}: expected the bytes of a PNG, JPEG, DICOM or .npy file, got {type(data).__name__}")
    if is_dicom(data):
        return read_dicom(data, name)[0]
    if data.startswith(NPY_MAGIC):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{name}: unreadable .npy data: {e}") from None
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] not in (1, 3, 4) or arr.dtype.kind not in "uif":
            raise ValueError(f"{name}: a .npy image must be a numeric (H, W) or (C, H, W) array with C in 1, 3, 4; "
                             f"got {arr.dtype} {arr.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ValueError(f"{name}: the pixel array holds {bad} NaN or infinite value(s); pixels must be finite "
                             "numbers")
        if min(arr.shape[1:]) < 1:
            raise ValueError(f"{name}: the pixel array is empty ({arr.shape})")
        return arr
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.array(img)  # a writable copy
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name}: not a readable PNG/JPEG image ({e})") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


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


class ChestXrayClassifier(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of the exported bundle (see the module docstring for input and output).

    Artifacts (set by :func:`custom.deploy.registry.log_pyfunc_model`): ``model`` (the TorchScript file)
    and ``inference_config`` (the bundle's ``inference.json``).

    Args:
        batch_size: images per forward pass.
    """

    def __init__(self, batch_size: int = 64):
        self.batch_size = int(batch_size)

    def load_context(self, context) -> None:
        from monai.bundle import ConfigParser
        from monai.transforms import Compose, LoadImaged

        parser = ConfigParser()
        parser.read_config(context.artifacts["inference_config"])
        self.classes = [str(c) for c in parser.get_parsed_content("classes")]
        pre = parser.get_parsed_content("preprocessing")
        self.preprocess = Compose([t for t in pre.transforms if not isinstance(t, LoadImaged)])
        self.postprocess = parser.get_parsed_content("postprocessing")
        self.model = TorchScriptRunner(torch.jit.load(context.artifacts["model"], map_location="cpu")).eval()

    def _tensors(self, model_input) -> list:
        """The preprocessed images; :class:`MlflowException` (HTTP 400) naming every row that is not an image."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            images = _images(model_input)
        except (TypeError, ValueError) as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        tensors, errors = [], []
        for i, data in enumerate(images):
            try:
                tensors.append(torch.as_tensor(self.preprocess({IMAGE_COLUMN: decode_image(data,
                                                                                           f"row {i}")})[IMAGE_COLUMN]))
            except (TypeError, ValueError) as e:
                errors.append(str(e))
            except Exception as e:  # e.g. an array the preprocessing cannot take
                errors.append(f"row {i}: {type(e).__name__}: {e}")
        if errors:
            more = f" (and {len(errors) - 1} more bad row(s): {'; '.join(errors[1:10])})" if len(errors) > 1 else ""
            raise MlflowException(f"{errors[0]}{more}", error_code=INVALID_PARAMETER_VALUE)
        return tensors

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # (the DataFrame hint is what MLflow hands over; with it MLflow infers nothing from the hint and,
        # unlike without one, does not warn on import that the method has no type hints)
        tensors = self._tensors(model_input)
        probs = []
        for start in range(0, len(tensors), self.batch_size):
            logits = self.model(torch.stack(tensors[start : start + self.batch_size]).float())
            if logits.ndim != 2 or logits.shape[1] != len(self.classes):
                raise ValueError(f"the network gives outputs of shape {tuple(logits.shape)} but {len(self.classes)} "
                                 "classes are configured")
            probs += [torch.as_tensor(self.postprocess({"pred": z})["pred"]).float() for z in logits]
        values = torch.stack(probs).numpy() if probs else np.zeros((0, len(self.classes)), np.float32)
        return pd.DataFrame(values.astype(np.float64), columns=self.classes)
