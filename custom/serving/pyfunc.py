"""The MLflow pyfunc model of the bundle: encoded images in, per-class probabilities out.

The served model takes a table with one column, ``image``, of MLflow type ``binary``: the bytes
of a PNG, JPEG or DICOM file, or of a NumPy ``.npy`` file holding a pixel array (``(H, W)`` grey or
``(C, H, W)`` with C in 1, 3, 4). In Python pass ``bytes``; over REST send them base64-encoded
(MLflow decodes binary columns), e.g. ``{"dataframe_split": {"columns": ["image"], "data":
[["iVBORw0KGgo..."]]}}``. File paths are deliberately not accepted: a served model must not read
files of the server on a client's request.

It returns a ``pandas.DataFrame`` with one row per image and one column per class (the class
names of the bundle's ``inference.json``), holding sigmoid probabilities. Preprocessing and
postprocessing are those of ``inference.json`` (its image loader replaced by the decoder below),
and the network is the bundle's TorchScript export, so the model predicts what
``inference.json`` predicts.
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
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{name}: a string must be base64-encoded image bytes") from None
    if isinstance(data, (bytearray, memoryview, np.bytes_)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"{name}: expected the bytes of a PNG, JPEG or .npy file, got {type(data).__name__}")
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
            raise ValueError(f"{name}: a .npy image must be a numeric (H, W) or (C, H, W) array with C in 1, 3, 4; got {arr.dtype} {arr.shape}")
        return arr
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.array(img)  # a writable copy
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name}: not a readable PNG/JPEG image ({e})") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


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
    raise TypeError(f"unsupported input type {type(model_input).__name__}: give a DataFrame with an '{IMAGE_COLUMN}' column")


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

    @torch.no_grad()
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        images = _images(model_input)
        tensors = [torch.as_tensor(self.preprocess({IMAGE_COLUMN: decode_image(b, f"row {i}")})[IMAGE_COLUMN]) for i, b in enumerate(images)]
        probs = []
        for start in range(0, len(tensors), self.batch_size):
            logits = self.model(torch.stack(tensors[start : start + self.batch_size]).float())
            if logits.ndim != 2 or logits.shape[1] != len(self.classes):
                raise ValueError(f"the network gives outputs of shape {tuple(logits.shape)} but {len(self.classes)} classes are configured")
            probs += [torch.as_tensor(self.postprocess({"pred": z})["pred"]).float() for z in logits]
        values = torch.stack(probs).numpy() if probs else np.zeros((0, len(self.classes)), np.float32)
        return pd.DataFrame(values.astype(np.float64), columns=self.classes)
