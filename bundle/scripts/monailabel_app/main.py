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
BodyPartExamined not chest, a lateral ViewPosition) is refused with an error naming the reason
(``custom.data.dicom.guard_reason``); start the server with ``NVUM_DICOM_GUARD=0`` to let such images through.
So is an image unlike the training images (the out-of-distribution gate, ``custom.evaluation.ood``, whose file
``models/model.ood.npz`` training writes); ``NVUM_OOD_GATE=0`` turns it off.
"""

import logging
import os
import sys
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)

#: the model name in MONAI Label's REST API (``/infer/<model>``).
MODEL = "nvum_cxr_classification"


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
        reason = dicom_guard(request.get("image"), self.bundle)
        if reason:
            raise ValueError(f"{MODEL}: image {request.get('image')} refused: {reason} (NVUM_DICOM_GUARD=0 on the "
                             "server lets it through)")
        reason = ood_gate(request.get("image"), self.bundle)
        if reason:
            raise ValueError(f"{MODEL}: image {request.get('image')} refused: {reason} (NVUM_OOD_GATE=0 on the "
                             "server lets it through)")
        return super().__call__(request, *args, **kwargs)


def ood_gate(image, bundle):
    """Why the bundle's out-of-distribution gate refuses ``image`` (a file path; ``custom.evaluation.ood``), ``None``
    when it does not (or the bundle has no gate, or ``$NVUM_OOD_GATE`` is 0)."""
    if not isinstance(image, str) or not os.path.isfile(image):
        return None
    if bundle not in sys.path:
        sys.path.insert(0, bundle)
    from custom.evaluation.ood import refused_files

    refused = refused_files([image], bundle)
    return refused[0][1] if refused else None


def dicom_guard(image, bundle):
    """Why the bundle's DICOM input guard refuses ``image`` (a file path), ``None`` when it does not (not a DICOM
    file, a frontal chest radiograph, or ``$NVUM_DICOM_GUARD`` is 0)."""
    if not isinstance(image, str) or not os.path.isfile(image):
        return None
    if bundle not in sys.path:  # the bundle's ``custom`` package (the bundle config imports it too)
        sys.path.insert(0, bundle)
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
