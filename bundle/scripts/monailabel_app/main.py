"""MONAI Label app serving this bundle as a multi-label classification task (no download).

Needs MONAI Label (0.8.5) in an environment of its own (it pins ``numpy<2``); the repository's
``python -m custom.tools.monailabel`` builds one and checks the server against ``inference.json``.
Serve the bundle this folder sits in (``<bundle>/scripts/monailabel_app``), or another unzipped
bundle named with ``--conf bundle <folder>``::

    monailabel start_server --app <copy of this folder> --studies <folder of PNG/JPEG images> \\
        --conf bundle /opt/bundles/nvum_cxr_classification --host 127.0.0.1 --port 8000
    curl -X POST "http://127.0.0.1:8000/infer/nvum_cxr_classification?image=<image id>&output=json"

The answer is ``{"prediction": [{"idx": 0, "label": "atelectasis", "score": 0.12}, ...]}``: one
sigmoid probability per class (MONAI Label lower-cases the metadata's class names). Copy the folder
before starting the server: MONAI Label writes its logs and state into the app folder.

A DICOM image whose header says it is not a frontal chest radiograph (Modality not CR/DX/RG,
BodyPartExamined not chest, a lateral ViewPosition) is refused (``custom.data.dicom.guard_reason``); start the
server with ``NVUM_DICOM_GUARD=0`` to let such images through. So is an image unlike the training images (the
out-of-distribution gate, ``custom.evaluation.ood``, whose file ``models/model.ood.npz`` training writes);
``NVUM_OOD_GATE=0`` turns it off. The client gets HTTP 400 whose ``detail`` names the image sent (its id or path;
an upload, which MONAI Label stores under a temporary name, is called "the uploaded file", by the name the client
gives in the request's params, ``params={"file_name": "<name>"}``, when it gives one) and the reason.
A folder sent as the image (a DICOM series) goes through the same guard, file by file; a folder holding one
image is scored as that image, one holding several is refused (one radiograph per request).

DICOM files in ``--studies`` are listed by MONAI Label's datastore only with their suffix in
``MONAI_LABEL_DATASTORE_FILE_EXT`` (default: no ``*.dcm``, no ``*.jpeg``); start the server with
``MONAI_LABEL_DATASTORE_FILE_EXT='["*.png", "*.jpg", "*.jpeg", "*.dcm"]'`` (or send an absolute path or an upload).
"""

import logging
import os
import sys
import tempfile
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)

#: the model name in MONAI Label's REST API (``/infer/<model>``).
MODEL = "nvum_cxr_classification"
#: the request key under which :class:`NVUMApp` keeps how to name the image the client sent.
SENT = "nvum_image_sent"
#: the params key under which a client names the file it uploads (MONAI Label keeps only the file's suffix).
FILE_NAME = "file_name"
#: the HTTP status of a refused image.
REFUSED_STATUS = 400


def refusal(message: str) -> Exception:
    """The error to raise for a refused image: FastAPI's ``HTTPException`` (MONAI Label's server answers it with
    HTTP 400 and ``{"detail": message}``; any other exception is a bare 500), a ``ValueError`` without FastAPI."""
    try:
        from fastapi import HTTPException
    except ImportError:
        return ValueError(message)
    return HTTPException(status_code=REFUSED_STATUS, detail=message)


def sent_name(sent, path, file_name=None) -> str:
    """How to name, to the client, the image it sent: ``sent`` (an id, or a path) as MONAI Label resolved it to
    ``path``; an upload is stored by MONAI Label as a temporary file, named by the client's ``file_name`` (its
    request params' :data:`FILE_NAME`) when it gives one."""
    if isinstance(sent, str) and sent == path and os.path.dirname(os.path.abspath(sent)) == tempfile.gettempdir() \
            and os.path.basename(sent).startswith("tmp"):
        named = f" {file_name}" if isinstance(file_name, str) and file_name.strip() else ""
        return f"the uploaded file{named} (stored by MONAI Label as {sent})"
    if isinstance(sent, str) and isinstance(path, str) and path and path != sent:
        return f"image {sent} ({path})"
    return f"image {sent}"


def series_image(folder: str, name: str) -> str:
    """The one image file of ``folder`` (a DICOM series sent as a folder), every DICOM file of it passed through the
    guard first; :func:`refusal` naming ``name``, the file and the reason otherwise."""
    from custom.data.dicom import dicom_guard_enabled, guard_file, is_dicom

    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != "DICOMDIR")
    images = [p for p in files if p.suffix.lower() in (".png", ".jpg", ".jpeg") or is_dicom(p)]
    if dicom_guard_enabled():
        for path in images:
            reason = guard_file(path) if is_dicom(path) else None
            if reason:
                raise refusal(f"{MODEL}: {name} refused: {path.relative_to(folder)} in it: {reason} "
                              "(NVUM_DICOM_GUARD=0 on the server lets it through)")
    if len(images) != 1:
        found = f"{len(images)} images ({', '.join(str(p.relative_to(folder)) for p in images[:3])}" \
                f"{', ...' if len(images) > 3 else ''})" if images else "no PNG, JPEG or DICOM file"
        raise refusal(f"{MODEL}: {name} refused: a folder holding {found}; the model scores one radiograph per "
                      "request: send one file")
    return str(images[0])


class MultiLabelBundleInferTask(BundleInferTask):
    """MONAI Label's bundle task for a multi-label classifier.

    Two options of the stock task matter: the type is ``classification`` (the result is the list
    of per-class scores written by MONAI Label's ``ClassificationWriter``, not a label image), and
    ``Restored`` is not appended to the post-processing (it would resize the 14-value output
    to the image's size, as for a segmentation mask).
    """

    def __init__(self, path: str, conf: dict):
        super().__init__(path, conf, type="classification", add_post_restore=False)
        self.bundle = path

    def __call__(self, request, *args, **kwargs):
        image = request.get("image")
        name = request.get(SENT) or f"image {image}"
        if isinstance(image, (list, tuple)) or (isinstance(image, str) and os.path.isdir(image)):
            folders = sorted({p if os.path.isdir(p) else os.path.dirname(p) for p in
                              ([image] if isinstance(image, str) else image)})
            if len(folders) != 1:
                raise refusal(f"{MODEL}: {name} refused: files of {len(folders)} folders; send one file")
            _import_bundle(self.bundle)
            request = {**request, "image": series_image(folders[0], name)}
            image = request["image"]
        reason = dicom_guard(image, self.bundle)
        if reason:
            raise refusal(f"{MODEL}: {name} refused: {reason} (NVUM_DICOM_GUARD=0 on the server lets it through)")
        reason = unreadable(image, self.bundle)
        if reason:
            raise refusal(f"{MODEL}: {name} refused: {reason}")
        reason = ood_gate(image, self.bundle)
        if reason:
            raise refusal(f"{MODEL}: {name} refused: {reason} (NVUM_OOD_GATE=0 on the server lets it through)")
        return super().__call__({k: v for k, v in request.items() if k != SENT}, *args, **kwargs)


def _import_bundle(bundle) -> None:
    """Make the bundle's ``custom`` package importable (the bundle config imports it too)."""
    if bundle not in sys.path:
        sys.path.insert(0, bundle)


def unreadable(image, bundle):
    """Why ``image`` (a file path) cannot be read, as inference says it (``custom.data.transforms.check_image``);
    ``None`` when it can (or is not a file)."""
    if not isinstance(image, str) or not os.path.isfile(image):
        return None
    _import_bundle(bundle)
    from custom.data.transforms import check_image

    return check_image(image)


def ood_gate(image, bundle):
    """Why the bundle's out-of-distribution gate refuses ``image`` (a file path; ``custom.evaluation.ood``), ``None``
    when it does not (or the bundle has no gate, or ``$NVUM_OOD_GATE`` is 0)."""
    if not isinstance(image, str) or not os.path.isfile(image):
        return None
    _import_bundle(bundle)
    from custom.evaluation.ood import refused_files

    refused = refused_files([image], bundle)
    return refused[0][1] if refused else None


def dicom_guard(image, bundle):
    """Why the bundle's DICOM input guard refuses ``image`` (a file path), ``None`` when it does not (not a DICOM
    file, a frontal chest radiograph, or ``$NVUM_DICOM_GUARD`` is 0)."""
    if not isinstance(image, str) or not os.path.isfile(image):
        return None
    _import_bundle(bundle)
    from custom.data.dicom import dicom_guard_enabled, guard_file, is_dicom

    if not dicom_guard_enabled() or not is_dicom(image):
        return None
    return guard_file(image)


class NVUMApp(MONAILabelApp):
    """One infer task, ``nvum_cxr_classification``, for the bundle in ``conf["bundle"]`` (default: the
    bundle this app sits in, two folders up)."""

    def __init__(self, app_dir, studies, conf):
        default = Path(__file__).resolve().parents[2]
        self.bundle = os.path.abspath(conf.get("bundle") or default)
        if not os.path.isfile(os.path.join(self.bundle, "configs", "inference.json")):
            raise ValueError(f"no bundle at {self.bundle} (no configs/inference.json): pass --conf bundle <folder>")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="NVUM chest X-ray classification",
                         description="Multi-label chest X-ray classification (NVUM), one probability per class")

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, with how to name the image sent kept for the task's messages."""
        request = dict(request)
        sent = request.get("image")
        path = sent
        if isinstance(sent, str) and not os.path.exists(sent):
            try:
                path = (datastore or self.datastore()).get_image_uri(sent)
            except Exception:  # an unknown id: MONAI Label says so itself
                path = sent
        request[SENT] = sent_name(sent, path, request.get(FILE_NAME))
        return super().infer(request, datastore)

    def init_infers(self):
        task = MultiLabelBundleInferTask(self.bundle, self.conf)
        if not task.is_valid():
            raise ValueError(f"MONAI Label could not load the bundle {self.bundle}")
        logger.info(f"serving {self.bundle} as {MODEL}")
        return {MODEL: task}

    def init_trainers(self):
        return {}

    def init_strategies(self):
        return {}

    def init_scoring_methods(self):
        return {}
