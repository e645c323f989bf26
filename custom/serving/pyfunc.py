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
its pixels are decoded or allocated (decoding: :mod:`custom.serving.decode`).

A degenerate image (a side under 1/4 of the network input, or constant: a 1x1 or an all-black PNG;
:func:`custom.data.transforms.degenerate_reason`) gets inference's policy, ``degenerate_images`` of the model's
``inference.json`` (default ``"warn"``) unless the request's parameter ``degenerate_images`` says otherwise:
``"warn"`` scores it and adds the column ``input_warning`` (inference's words, "degenerate image, scored all the
same: ..."; empty for the other rows; the column is there only when a row is degenerate), ``"refuse"`` makes the
request a bad one ("row 0: degenerate image, not scored (degenerate_images='refuse'): ...").

Limits of a request, checked before anything is decoded (HTTP 400 naming the limit and the
variable that sets it): at most :data:`MAX_ROWS` rows (``$NVUM_MAX_ROWS``), at most
:data:`MAX_REQUEST_BYTES` bytes of encoded images in all (``$NVUM_MAX_REQUEST_BYTES``; the length
of the base64 text, or of the bytes) and at most :data:`MAX_REQUEST_PIXELS` pixels in all, from the images'
headers (``$NVUM_MAX_REQUEST_PIXELS``: it bounds the CPU a request takes). The rows are decoded and predicted
:data:`CHUNK_ROWS` at a time, so the memory a request takes beyond its own data is bounded by a chunk. A second
after a request ends, answered or refused, when the server has dropped its body and table, the free memory goes back
to the system (:func:`release_memory_later`; pyarrow, which holds pandas' string column, is set to allocate with
``malloc`` for it): the server returns to within a few per cent of its idle size (``bundle/docs/deploy.md``).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from ..data.dicom import dicom_guard_enabled
from ..data.datalist import DEGENERATE_IMAGE_POLICIES
from ..data.messages import degenerate_refused, degenerate_warned
from ..data.transforms import degenerate_tensor_reason
from ..evaluation.ood import FeatureDistance, logits_and_features, ood_gate_enabled
from .decode import MAX_PIXELS, decode_image, encode_array, image_pixels
from .loaders import TorchScriptRunner

__all__ = ["ChestXrayClassifier", "MAX_PIXELS", "decode_image", "encode_array", "request_limits", "pixel_budget"]

#: the input column of the pyfunc model.
IMAGE_COLUMN = "image"
#: suffix of the decision column of a class (``<class>_positive``), returned when the model has thresholds.
POSITIVE_SUFFIX = "_positive"
#: the most rows (images) of one request; ``$NVUM_MAX_ROWS`` sets another.
MAX_ROWS = 256
#: the most bytes of encoded images (base64 text or bytes, all rows together) of one request;
#: ``$NVUM_MAX_REQUEST_BYTES`` sets another.
MAX_REQUEST_BYTES = 256 * 2**20
#: the environment variables of the request limits.
MAX_ROWS_ENV, MAX_REQUEST_BYTES_ENV = "NVUM_MAX_ROWS", "NVUM_MAX_REQUEST_BYTES"
#: the most pixels of one request (height x width, x frames for DICOM, all rows together), counted from the
#: images' headers before anything is decoded: 2**28, e.g. 256 images of 1024 x 1024 or 28 of 3000 x 3000
#: (a few seconds of CPU); ``$NVUM_MAX_REQUEST_PIXELS`` sets another.
MAX_REQUEST_PIXELS = 2**28
MAX_REQUEST_PIXELS_ENV = "NVUM_MAX_REQUEST_PIXELS"
#: the column added when a row is degenerate under ``degenerate_images="warn"``: why (empty for the other rows).
WARNING_COLUMN = "input_warning"
#: rows decoded and predicted at a time (the memory a request takes beyond its own data).
CHUNK_ROWS = 64
#: the columns added with the parameter ``ood="flag"``.
DISTANCE_COLUMN, IN_DISTRIBUTION_COLUMN = "ood_distance", "in_distribution"
#: the values of the parameter ``ood``: refuse the request (HTTP 400), or flag the rows.
OOD_MODES = ("refuse", "flag")


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
    return _positive_env(MAX_ROWS_ENV, MAX_ROWS), _positive_env(MAX_REQUEST_BYTES_ENV, MAX_REQUEST_BYTES)


def pixel_budget() -> int:
    """The most pixels of one request: :data:`MAX_REQUEST_PIXELS` unless ``$NVUM_MAX_REQUEST_PIXELS`` sets another."""
    return _positive_env(MAX_REQUEST_PIXELS_ENV, MAX_REQUEST_PIXELS)


def _positive_env(env: str, default: int) -> int:
    text = os.environ.get(env, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${env} must be a positive whole number, got {text!r}")
    return value


def _encoded_size(data) -> int:
    if isinstance(data, (str, bytes, bytearray, np.bytes_)):
        return len(data)
    if isinstance(data, memoryview):
        return data.nbytes
    return 0  # not an image: the decoder names the row


def _system_arrow_pool() -> None:
    """Make pyarrow allocate with ``malloc`` (its system pool), which :func:`release_memory` trims: pandas keeps a
    request's string column in pyarrow memory, and pyarrow's default pool (mimalloc) kept a refused 300 MB request's
    column after it was freed."""
    try:
        import pyarrow
    except ImportError:  # pandas then keeps strings as Python objects, in the heap
        return
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


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
#: seconds after a request that its memory is handed back (:func:`release_memory_later`).
RELEASE_DELAY_S = 1.0
_RELEASE = {"timer": None, "lock": threading.Lock()}


def release_memory_later(delay: float | None = None) -> None:
    """In ``delay`` seconds (:data:`RELEASE_DELAY_S`; once, however many requests end meanwhile): collect garbage
    cycles and
    :func:`release_memory`. The server frees a request's body and parsed table only after the model has answered,
    so a release inside ``predict`` comes too early for them."""
    def release():
        gc.collect()
        release_memory()

    delay = RELEASE_DELAY_S if delay is None else delay

    with _RELEASE["lock"]:
        if _RELEASE["timer"] is not None:
            _RELEASE["timer"].cancel()
        _RELEASE["timer"] = threading.Timer(delay, release)
        _RELEASE["timer"].daemon = True
        _RELEASE["timer"].start()


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
        pixel_budget()  # so does a bad $NVUM_MAX_REQUEST_PIXELS
        _system_arrow_pool()
        dicom_guard_enabled()  # so does a bad $NVUM_DICOM_GUARD
        parser = ConfigParser()
        parser.read_config(context.artifacts["inference_config"])
        self.classes = [str(c) for c in parser.get_parsed_content("classes")]
        # the degenerate-image policy and size rule of inference.json, as inference applies them
        self.degenerate_images = _degenerate_policy(parser.get_parsed_content("degenerate_images", default="warn"))
        size = parser.get_parsed_content("image_size", default=None)  # (none: the size rule is not checked)
        self.image_size = int(size) if size else None
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
        budget, total, over = pixel_budget(), 0, None
        for i, data in enumerate(images):  # from the headers: nothing decoded yet
            pixels = image_pixels(data) or 0  # a row whose header does not say, or over the limit per image,
            total += pixels if pixels <= MAX_PIXELS else 0  # is named by the decoder
            over = i if over is None and total > budget else over
        if over is not None:
            raise MlflowException(f"the request's images have {total} pixels in all, over the limit of {budget} "
                                  f"pixels per request (row {over} takes the total over it; ${MAX_REQUEST_PIXELS_ENV} "
                                  "on the server sets it); send the images in several requests",
                                  error_code=INVALID_PARAMETER_VALUE)
        return images

    def _tensors(self, images: list, first: int, errors: list, warnings: list, policy: str | None) -> list:
        """The preprocessed images of rows ``first``, ``first + 1``, ...; the reasons of bad rows go to ``errors``,
        and under ``policy`` (``degenerate_images``; ``None``: not checked) why each row is degenerate (or "")
        to ``warnings`` ("warn"), or to ``errors`` ("refuse"), with inference's words."""
        tensors = []
        for i, data in enumerate(images, first):
            try:
                image = decode_image(data, f"row {i}")
                why = degenerate_tensor_reason(image, getattr(self, "image_size", None)) if policy else None
                if why and policy == "refuse":
                    errors.append(f"row {i}: {degenerate_refused(why)}")
                    continue
                warnings.append(degenerate_warned(why) if why else "")
                tensors.append(torch.as_tensor(self.preprocess({IMAGE_COLUMN: image})[IMAGE_COLUMN]))
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

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # (the DataFrame hint is what MLflow hands over; with it MLflow infers nothing from the hint and,
        # unlike without one, does not warn on import that the method has no type hints)
        try:
            return self._predict(model_input, params)
        finally:  # refused or answered: the request's memory goes back to the system once the server drops it
            release_memory_later()

    @torch.no_grad()
    def _predict(self, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        images = self._images(model_input)
        mode = (params or {}).get("ood") or "refuse"
        if mode not in OOD_MODES:
            raise MlflowException(f"the parameter ood must be one of {OOD_MODES}, got {mode!r}",
                                  error_code=INVALID_PARAMETER_VALUE)
        try:  # the parameter, else inference.json's setting (models pickled before the policy: none)
            policy = _degenerate_policy((params or {}).get("degenerate_images") or getattr(self, "degenerate_images",
                                                                                            None))
        except ValueError as e:
            raise MlflowException(f"the parameter {e}", error_code=INVALID_PARAMETER_VALUE) from None
        chunk = max(1, int(getattr(self, "chunk_rows", CHUNK_ROWS)))  # (models pickled before chunk_rows: default)
        probs, errors, distances, warnings = [], [], [], []
        try:
            for start in range(0, len(images), chunk):
                tensors = self._tensors(images[start : start + chunk], start, errors, warnings, policy)
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
        if any(warnings):  # under "warn", as inference lists such images in errors.csv
            out[WARNING_COLUMN] = warnings
        return out


def _degenerate_policy(value) -> str | None:
    """``value`` when it is one of :data:`DEGENERATE_IMAGE_POLICIES` (``None`` stays ``None``); ValueError else."""
    if value is not None and value not in DEGENERATE_IMAGE_POLICIES:
        raise ValueError(f"degenerate_images must be one of {DEGENERATE_IMAGE_POLICIES}, got {value!r}")
    return value
