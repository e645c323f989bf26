"""The out-of-distribution gate: only images like the training images get an answer (bundle/docs/ood.md).

In the forward pass that gives the logits (:func:`logits_and_features`), two views of each image are read:
the input of the network's last linear layer (DenseNet121's pooled features, as FRODO, Çallı et al., MIDL
2019) and statistics of the network input (:func:`~.ood_distance.image_statistics`: grey-level and edge
layouts, grey-level quantiles). Their distance to the training images (:mod:`.ood_distance`: Mahalanobis,
Ledoit-Wolf covariance, each view over its own threshold, the larger of the two) is compared with a threshold
set on the validation images to accept ``share`` (99%) of new images like them. An image farther than the
threshold is refused with the reason "not like the training images: distance 3.41 > 1.02".

The gate is stored beside the weights (:func:`ood_path`: ``model.pt`` -> ``model.ood.npz``), written after
training by :class:`custom.evaluation.operating.OperatingThresholds` (or by the test report when it chooses
thresholds on validation, or by ``python -m custom.cli fit_ood``), and read by inference (:class:`OODGate`),
the served model, the MONAI Label task and the Deploy app. ``$NVUM_OOD_GATE=0`` turns it off (:func:`ood_gate_enabled`).

This module is runtime code: it imports nothing from :mod:`custom.tools`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .ood_distance import DEFAULT_SHARE, NUM_IMAGE_STATISTICS, REFUSAL, FeatureDistance, fit_gate, image_statistics

__all__ = ["DEFAULT_SHARE", "REFUSAL", "FeatureDistance", "fit_gate", "image_statistics", "OODGate", "FeatureTap",
           "logits_and_features", "no_gate_reason", "predict_features", "fit_on_images", "load_gate", "ood_path",
           "ood_gate_enabled", "refused_files", "acquisition_jitter"]

#: the environment variable that turns the gate off (``0``, ``false``, ``no``, ``off``).
OOD_GATE_ENV = "NVUM_OOD_GATE"


def ood_path(weights) -> Path:
    """The gate file of a weights file: ``model.pt`` -> ``model.ood.npz`` (the one place the name is made)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".ood.npz")


def ood_gate_enabled() -> bool:
    """Whether the gate is on: yes unless ``$NVUM_OOD_GATE`` is ``0``, ``false``, ``no`` or ``off`` (any case).

    Raises:
        ValueError: another value, naming the variable.
    """
    text = os.environ.get(OOD_GATE_ENV, "").strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"${OOD_GATE_ENV} must be 1 (refuse images unlike the training images, the default) or 0 "
                     f"(score every image), got {text!r}")


def load_gate(weights) -> FeatureDistance | None:
    """The gate stored beside ``weights`` (:func:`ood_path`), or ``None`` when there is none."""
    if weights in (None, ""):
        return None
    path = ood_path(weights)
    return FeatureDistance.load(path) if path.is_file() else None


def _scripted_densenet(module) -> bool:
    layers = getattr(module, "class_layers", None)
    return isinstance(module, torch.jit.ScriptModule) and layers is not None and hasattr(module, "features")


def no_gate_reason(network: torch.nn.Module) -> str | None:
    """Why the gate cannot read ``network``'s features (``None`` when it can: it has a linear layer)."""
    if any(isinstance(m, torch.nn.Linear) for m in network.modules()):
        return None
    return (f"no out-of-distribution gate: {type(network).__name__} has no linear layer (the gate reads the input "
            "of the last one)")


def _last_linear(network: torch.nn.Module) -> torch.nn.Module:
    linear = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise ValueError(f"{type(network).__name__} has no linear layer: the gate reads the input of the last one")
    return linear[-1]


class FeatureTap:
    """Keeps the gate's features of every forward pass of a network (as :func:`logits_and_features` gives them):
    the input of its last linear layer (DenseNet121: the pooled features) then the statistics of the network input
    (:func:`~.ood_distance.image_statistics`), through two forward pre-hooks; :attr:`features` holds the last
    batch's, detached, float32 on the CPU.

    Use as a context manager, or call :meth:`remove`.
    """

    def __init__(self, network: torch.nn.Module):
        self.features: torch.Tensor | None = None
        self._statistics: torch.Tensor | None = None
        self._handles = [network.register_forward_pre_hook(self._keep_input),
                         _last_linear(network).register_forward_pre_hook(self._keep)]

    def _keep_input(self, module, inputs):
        self._statistics = image_statistics(inputs[0])

    def _keep(self, module, inputs):
        pooled = inputs[0].detach().float().flatten(1).cpu()
        self.features = torch.cat([pooled, self._statistics], dim=1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def logits_and_features(network, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``images`` and the gate's features, from one forward pass: the input of the last linear layer,
    then :func:`~.ood_distance.image_statistics` of ``images`` (float32, on the CPU).

    A Python network is run with a :class:`FeatureTap`; a TorchScript DenseNet (the bundle's ``model.ts``, also
    inside a :class:`~custom.serving.loaders.TorchScriptRunner`) is run layer by layer as its own ``forward``
    does (``features``, then ``class_layers``: relu, pool, flatten, out), since hooks cannot be added to it.
    """
    module = getattr(network, "module", network)
    if _scripted_densenet(module):
        with torch.jit.optimized_execution(False):
            layers = module.class_layers
            pooled = layers.flatten(layers.pool(layers.relu(module.features(images))))
            features = torch.cat([pooled.detach().float().cpu(), image_statistics(images)], dim=1)
            return layers.out(pooled), features
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError("the gate reads the pooled features of a TorchScript DenseNet (features, class_layers); "
                         f"this TorchScript model has no such layers ({type(module).__name__})")
    with FeatureTap(network) as tap:
        logits = network(images)
    return logits, tap.features


#: the acquisition jitter of :func:`acquisition_jitter`: ranges of gamma, contrast (around mid-grey), offset, pixel
#: noise standard deviation (of [0, 1] intensities), and the chance of a 3 x 3 binomial blur.
JITTER = {"gamma": (0.6, 1.4), "contrast": (0.75, 1.25), "offset": (-0.05, 0.05), "noise": (0.0, 0.03), "blur": 0.5}


def acquisition_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Network inputs (``(N, 3, H, W)``, normalised as :class:`~custom.data.transforms.ChestXrayToTensord` does)
    as another scanner or hospital might have taken them: per image a random gamma, contrast, offset, pixel noise
    and, half the time, a slight blur (:data:`JITTER`), applied to the [0, 1] intensities."""
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    n = len(images)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)

    def draw(low, high):
        return (torch.rand(n, 1, 1, 1, generator=generator) * (high - low) + low).to(images.device)

    x = (images.float() * std + mean).clamp(1e-6, 1.0) ** draw(*JITTER["gamma"])
    x = (x - 0.5) * draw(*JITTER["contrast"]) + 0.5 + draw(*JITTER["offset"])
    x = x + torch.randn(x.shape, generator=generator).to(x.device) * draw(*JITTER["noise"])
    kernel = torch.tensor([0.25, 0.5, 0.25], device=x.device)
    kernel = (kernel[:, None] * kernel[None, :]).expand(x.shape[1], 1, 3, 3)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel,
                                         groups=x.shape[1])
    x = torch.where((torch.rand(n, generator=generator) < JITTER["blur"]).to(x.device).view(n, 1, 1, 1), blurred, x)
    return ((x.clamp(0.0, 1.0) - mean) / std).to(images.dtype)


@torch.no_grad()
def predict_features(network, items: list[dict], transform, device="cpu", batch_size: int = 256,
                     num_workers: int = 0, desc: str = "features", amp: bool = False,
                     jitter_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, features)`` of data-list items (as :func:`custom.evaluation.predict.predict`, with the features);
    with ``jitter_seed``, of the images under :func:`acquisition_jitter` (seeded)."""
    from .predict import item_batches

    device = torch.device(device)
    network.eval()
    generator = torch.Generator().manual_seed(int(jitter_seed)) if jitter_seed is not None else None
    logits, features = [], []
    for batch in item_batches(items, transform, batch_size, num_workers, desc):
        images = batch["image"].to(device)
        if generator is not None:
            images = acquisition_jitter(images, generator)
        with torch.autocast(device.type, enabled=amp):
            z, f = logits_and_features(network, images)
        logits.append(z.float().cpu())
        features.append(f)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def fit_on_images(network, fit_items: list[dict], threshold_items: list[dict], transform, share: float = DEFAULT_SHARE,
                  jitter: bool = True, seed: int = 0, threshold_features=None, **predict) -> FeatureDistance:
    """The gate of a network (:func:`fit_gate`): mean and covariance of the features of ``fit_items`` (the training
    images), threshold accepting ``share`` of ``threshold_items`` (the validation images, as taken).

    With ``jitter`` (the default) the fit images also enter once under :func:`acquisition_jitter` (seeded): the
    covariance then spans the directions in which another exposure, contrast, noise or sharpness moves a chest
    X-ray, so that the same images from another scanner stay near, while the threshold is still set on real images.
    (On the synthetic set it is what keeps the shifted split, "another hospital", accepted: bundle/docs/ood.md.)

    Args:
        threshold_features: the features of ``threshold_items`` when they are already known (then the items are
            not read).
        predict: ``device``, ``batch_size``, ``num_workers``, ``amp`` of :func:`predict_features`.
    """
    fitted = [predict_features(network, fit_items, transform, desc="gate: training images", **predict)[1]]
    if jitter:
        fitted.append(predict_features(network, fit_items, transform, desc="gate: training images, jittered",
                                       jitter_seed=seed, **predict)[1])
    held = threshold_features
    if held is None:
        held = predict_features(network, threshold_items, transform, desc="gate: threshold images", **predict)[1]
    views = (held.shape[1] - NUM_IMAGE_STATISTICS, NUM_IMAGE_STATISTICS)
    return fit_gate(np.concatenate(fitted), held, share, view_sizes=views)


def fit_and_save_gate(network, fit_items: list[dict], threshold_items: list[dict], transform, checkpoint,
                      share: float = DEFAULT_SHARE, fitted_on: str | None = None,
                      **fit) -> tuple[FeatureDistance, Path]:
    """:func:`fit_on_images`, written beside ``checkpoint`` (:func:`ood_path`) and said in one printed line (its
    threshold, the share of the threshold images it accepts, ``fitted_on`` when given, the file): training's
    operating-thresholds step, the test report and ``python -m custom.cli fit_ood`` all fit a gate this way.

    Returns:
        the gate and the file written.
    """
    gate = fit_on_images(network, fit_items, threshold_items, transform, share, **fit)
    path = gate.save(ood_path(checkpoint))
    source = f"; fitted on {fitted_on}" if fitted_on else ""
    print(f"out-of-distribution gate (distance threshold {gate.threshold:.2f}, accepting {share:.0%} of the "
          f"{gate.num_threshold} threshold images{source}) written to {path}", flush=True)
    return gate, path


class OODGate:
    """Inference handler: refuses the images of a batch whose features are too far from the training images'.

    It registers a :class:`FeatureTap` on the network when the run starts, or asks a
    :class:`~custom.serving.loaders.TorchScriptRunner` (``model.ts``) to keep them (the features come from the pass
    that gives the probabilities) and, after each iteration, marks every refused item of the decollated batch with
    the reason under ``refused`` (:data:`custom.serving.inference.REFUSED`), so that
    :class:`~custom.serving.inference.ProbabilityWriter` puts it in ``errors.csv`` instead of the probabilities
    and decisions, and :class:`~custom.serving.heatmaps.HeatmapWriter` draws no heatmap. List it before those
    handlers. Without a gate file beside ``checkpoint`` (or the ``.ts`` model's weights) it does nothing and
    says so once.

    Args:
        network: the inference network (a :class:`~custom.serving.loaders.BundleNetwork` is loaded first).
        checkpoint: the weights whose gate file (:func:`ood_path`) is read; a ``model.ts`` model's gate is
            ``model.ood.npz`` beside it too (the weights' gate, which the export copies).
        enabled: the switch; default (``None``): on unless ``$NVUM_OOD_GATE`` is ``0``.
    """

    def __init__(self, network, checkpoint=None, enabled=None):
        from ..flags import as_bool

        self.network, self.checkpoint = network, checkpoint
        self.enabled = ood_gate_enabled() if enabled is None else as_bool(enabled, "ood_gate")
        self.gate: FeatureDistance | None = None
        self.refused = 0
        self._tap: FeatureTap | None = None
        self._scripted = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._apply)
        engine.add_event_handler(Events.COMPLETED, self._stop)

    def _start(self, engine) -> None:
        self.refused = 0
        if not self.enabled:
            print(f"out-of-distribution gate off (${OOD_GATE_ENV}=0 or ood_gate false): every image is scored",
                  flush=True)
            return
        loaded = self.network.load() if hasattr(self.network, "load") else self.network
        source = getattr(self.network, "model_file", None) or self.checkpoint
        self.gate = load_gate(source) or load_gate(self.checkpoint)
        if self.gate is None:
            print(f"no out-of-distribution gate beside {source} ({ood_path(source).name}): every image is scored; "
                  "fit one with python -m custom.cli fit_ood", flush=True)
            return
        if hasattr(loaded, "keep_features"):  # a TorchScriptRunner (model.ts): it keeps the features itself
            loaded.keep_features, loaded.features = True, None
            self._tap = loaded
        elif isinstance(getattr(loaded, "module", loaded), torch.jit.ScriptModule):
            raise ValueError(f"the out-of-distribution gate cannot read the features of {source}: load it with "
                             "custom.TorchScriptRunner, or turn the gate off with ood_gate false")
        else:
            self._tap = FeatureTap(loaded)

    def _apply(self, engine) -> None:
        if self.gate is None or self._tap is None or self._tap.features is None:
            return
        from ..data.keys import READ_ERROR, REFUSED

        batch = engine.state.batch
        if not isinstance(batch, list):
            return
        for item, reason in zip(batch, self.gate.reasons(self._tap.features.numpy())):
            if reason and isinstance(item, dict) and not item.get(READ_ERROR) and not item.get(REFUSED):
                item[REFUSED] = reason
                self.refused += 1
        self._tap.features = None

    def _stop(self, engine) -> None:
        if isinstance(self._tap, FeatureTap):
            self._tap.remove()
        elif self._tap is not None:
            self._tap.keep_features = False
        self._tap = None
        if self.gate is not None:
            print(f"out-of-distribution gate: {self.refused} image(s) refused (distance > {self.gate.threshold:.2f})",
                  flush=True)


_BUNDLE_GATES: dict = {}


def _bundle_gate(bundle_dir):
    """``(gate, TorchScript model, preprocessing without the loader's LoadImaged)`` of an unzipped bundle, read once;
    ``None`` when its ``models/`` holds no gate."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle_dir).resolve()
    if bundle not in _BUNDLE_GATES:
        gate = load_gate(bundle / "models" / "model.pt")
        if gate is None:
            _BUNDLE_GATES[bundle] = None
        else:
            parser = ConfigParser()
            parser.read_config(str(bundle / "configs" / "inference.json"))
            parser["bundle_root"] = str(bundle)
            model = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu").eval()
            _BUNDLE_GATES[bundle] = (gate, model, parser.get_parsed_content("preprocessing"))
    return _BUNDLE_GATES[bundle]


@torch.no_grad()
def refused_files(files, bundle_dir, enabled=None) -> list[tuple[Path, str]]:
    """``(file, reason)`` for every image file the gate of an unzipped bundle refuses (its ``models/model.ood.npz``,
    with its ``model.ts`` and ``inference.json``'s preprocessing), for the MONAI Label task and the Deploy app, whose
    own pipelines have no place for it. A file that cannot be read is left to them to report.

    Args:
        files: image paths.
        bundle_dir: the unzipped bundle.
        enabled: the switch; default (``None``): on unless ``$NVUM_OOD_GATE`` is ``0``.
    """
    if not (ood_gate_enabled() if enabled is None else enabled):
        return []
    loaded = _bundle_gate(bundle_dir)
    if loaded is None:
        return []
    gate, model, preprocessing = loaded
    out = []
    for path in map(Path, files):
        try:
            image = torch.as_tensor(preprocessing({"image": str(path)})["image"]).float()[None]
        except Exception:  # unreadable: the task or app says why
            continue
        reason = gate.reason(float(gate.distance(logits_and_features(model, image)[1].numpy())[0]))
        if reason:
            out.append((path, reason))
    return out
