"""MONAI Deploy example application: PNG, JPEG or DICOM chest X-rays in, per-class probabilities (JSON) out.

Needs the MONAI Deploy App SDK runtime (``pip install monai-deploy-app-sdk``, which brings
Holoscan); it is not part of this project's ``requirements.txt``. The bundle's Python code
(``custom``) must be importable, so run it from the folder that holds ``custom/`` -- the extracted
deployable bundle (``nvum_cxr_classification/``) or the repository root::

    python -m scripts.deploy_app -i <PNG/JPEG/DICOM file or folder> -o <output folder> -m models/model.ts

The model is the bundle's TorchScript export (``models/model.ts``, with ``metadata.json`` and
``inference.json`` embedded); the SDK's bundle inference operator reads the preprocessing,
inferer and postprocessing from it. Each image is loaded as ``inference.json`` loads it, and the
results are written to ``<output folder>/probabilities.json`` as
``{image file name: {class name: probability}}``.

Every file given is scored or left out with a log line naming it and the reason (``deploy_io.select_images``):
files that are not PNG, JPEG or DICOM images (or whose name says another format), and DICOM files whose header
says they are not frontal chest radiographs (Modality not CR/DX/RG, BodyPartExamined not chest, a lateral
ViewPosition); ``NVUM_DICOM_GUARD=0`` keeps the latter. So are images unlike the training images (the
out-of-distribution gate of ``models/model.ood.npz``, ``custom.evaluation.ood.refused_files``); ``NVUM_OOD_GATE=0``
keeps them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Image, Operator, OperatorSpec
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.monai_bundle_inference_operator import (BundleConfigNames, IOMapping,
                                                                    MonaiBundleInferenceOperator)

from .deploy_io import format_probabilities, list_files, load_image, select_images, write_results


class ImageLoaderOperator(Operator):
    """Emits one PNG, JPEG or DICOM image per call, as an SDK ``Image`` holding the channel-first array and MONAI's
    metadata.

    Named output: ``image``. Schedule it with ``CountCondition(app, len(files))``.
    """

    def __init__(self, fragment, *args, files, **kwargs):
        self.files, self._next = list(files), 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("image")

    def compute(self, op_input, op_output, context):
        path = self.files[self._next]
        self._next += 1
        array, meta = load_image(path)
        op_output.emit(Image(array, metadata=meta), "image")


class MultiLabelBundleInferenceOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle inference operator with multi-label probability outputs.

    For an output of type ``"probabilities"`` the stock operator emits ``int(p)`` mapped through
    ``channel_def`` for every probability ``p`` (class 0 for every channel); this one emits
    ``{"image": <file name>, "probabilities": {class name: p}}``. It also runs the TorchScript
    model with the JIT's graph optimisation off (see ``custom.serving.loaders.TorchScriptRunner``).
    """

    def predict(self, data, *args, **kwargs):
        # with the JIT's graph optimisation on, the second call is slow too
        # (see custom.serving.loaders.TorchScriptRunner)
        with torch.jit.optimized_execution(False):
            return super().predict(data, *args, **kwargs)

    def _send_output(self, value, name, metadata, op_output, context):
        conf = self._outputs[name]
        if conf.get("type") != "probabilities":
            return super()._send_output(value, name, metadata, op_output, context)
        image = Path(str((metadata or {}).get("filename_or_obj", "image"))).name
        op_output.emit({"image": image, "probabilities": format_probabilities(value, conf["channel_def"])}, name)


class ProbabilityWriterOperator(Operator):
    """Collects the per-image results and (re)writes ``<output_folder>/probabilities.json`` after each image.

    Named input: ``pred`` (the dict emitted by :class:`MultiLabelBundleInferenceOperator`).
    """

    def __init__(self, fragment, *args, output_folder, **kwargs):
        self.output_folder, self.results = Path(output_folder), {}
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred")

    def compute(self, op_input, op_output, context):
        result = op_input.receive("pred")
        self.results[result["image"]] = result["probabilities"]
        path = write_results(self.results, self.output_folder)
        logging.info(f"probabilities of {len(self.results)} image(s) written to {path}")


class NVUMChestXrayApp(Application):
    """Image loader -> the bundle's inference (TorchScript model with embedded configs) -> JSON writer."""

    def compose(self):
        # input, output and model paths from -i/-o/-m, else the HOLOSCAN_* variables (AppContext({}) reads only these)
        app_context = Application.init_app_context(self.argv)
        # every file given is scored or named in a log line with its reason (a JPEG is scored, as inference does)
        files, refused = select_images(list_files(app_context.input_path))
        # the out-of-distribution gate (custom.evaluation.ood; NVUM_OOD_GATE=0 turns it off): images unlike the
        # training images are left out too, with the distance and the threshold
        from custom.evaluation.ood import refused_files

        model = Path(app_context.model_path)
        unlike = refused_files(files, model if model.is_dir() else model.resolve().parent.parent)
        files = [f for f in files if f not in {p for p, _ in unlike}]
        refused += unlike
        for path, reason in refused:
            logging.warning(f"{path}: left out, {reason}")
        if not files:
            raise ValueError(f"no image left to infer on under {app_context.input_path}: every file was "
                             f"refused, e.g. {refused[0][0]}: {refused[0][1]}")
        loader = ImageLoaderOperator(self, CountCondition(self, len(files)), files=files, name="image_loader")
        infer = MultiLabelBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=Path(app_context.model_path),
            name="bundle_inference",
        )
        writer = ProbabilityWriterOperator(self, output_folder=Path(app_context.output_path), name="probability_writer")
        self.add_flow(loader, infer, {("image", "image")})
        self.add_flow(infer, writer, {("pred", "pred")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    NVUMChestXrayApp().run()
