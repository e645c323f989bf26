"""Grad-CAM heatmaps: where the network looked for a class, written as PNG overlays by ``inference.json``.

Maps are computed with MONAI's :class:`monai.visualize.GradCAM` on one layer of the network:

* **DenseNet** (``DenseNet121`` and the other MONAI DenseNets, the bundle's default): the last dense
  block (``features.denseblock4``) whose output is at least ``min_size`` pixels wide at the input
  size. DenseNet121 halves the image five times, so at 224 px and above that is the last block
  (7 x 7 at 224 px, 16 x 16 at 512 px), as in the usual chest X-ray Grad-CAM; at the default 32 px the
  last block is 1 x 1 (no localisation at all) and ``features.denseblock2`` (4 x 4) is used.
* **ResNet** (MONAI's ``ResNet``, used by the noise benchmark): the last of ``layer1``..``layer4`` that
  is at least ``min_size`` wide, by the same rule.
* **Other networks**: the last 2D convolution whose output is at least ``min_size`` wide.

``inference.json``'s ``heatmap_layer`` names another layer. A TorchScript model cannot be hooked, so
heatmaps need the weights file ``models/model.pt``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..evaluation.figures import save_figure
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..data.keys import READ_ERROR, REFUSED

#: candidate layers per architecture (module-name patterns, shallow to deep).
LAYER_PATTERNS = {"DenseNet": r"features\.denseblock\d+", "ResNet": r"layer\d+"}
#: smallest width of the map that the automatic layer choice accepts.
MIN_MAP_SIZE = 4


def _family(network: torch.nn.Module) -> str | None:
    for cls in type(network).__mro__:
        for family in LAYER_PATTERNS:
            if cls.__name__.startswith(family):
                return family
    return None


@torch.no_grad()
def layer_sizes(
    network: torch.nn.Module, names: Sequence[str], image_size: int, in_channels: int = 3
) -> dict[str, int]:
    """The smaller side of each named layer's output for one ``image_size`` x ``image_size`` input."""
    sizes, hooks = {}, []
    modules = dict(network.named_modules())
    for name in names:
        hooks.append(
            modules[name].register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, min(o.shape[2:])))
        )
    training = network.training
    try:
        device = next(network.parameters()).device
        network.eval()(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        network.train(training)
        for hook in hooks:
            hook.remove()
    return sizes


def target_layer(network: torch.nn.Module, image_size: int, min_size: int = MIN_MAP_SIZE) -> str:
    """The layer Grad-CAM uses for ``network`` at ``image_size`` px (see the module docstring).

    Raises:
        ValueError: the network has no candidate layer.
    """
    family = _family(network)
    if family:
        names = [n for n, _ in network.named_modules() if re.fullmatch(LAYER_PATTERNS[family], n)]
    else:
        names = [n for n, m in network.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not names:
        raise ValueError(f"no layer to compute Grad-CAM on in {type(network).__name__}: name one with heatmap_layer")
    in_channels = next((m.in_channels for m in network.modules() if isinstance(m, torch.nn.Conv2d)), 3)
    sizes = layer_sizes(network, names, image_size, in_channels)
    wide = [n for n in names if sizes.get(n, 0) >= min_size]
    return wide[-1] if wide else max(names, key=lambda n: sizes.get(n, 0))


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own minimum and maximum (high = 1); a constant map becomes 0."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values.view(-1, *[1] * (maps.ndim - 1)), flat.max(1).values.view(-1, *[1] * (maps.ndim - 1))
    return torch.where(high > low, (maps - low) / (high - low).clamp_min(1e-12), torch.zeros_like(maps))


class GradCAMMaps:
    """Grad-CAM maps of a network (eager, not TorchScript) on one layer, for chosen classes.

    Args:
        network: the classifier (a ``torch.nn.Module`` with parameters).
        image_size: the input size, for the automatic layer choice.
        layer: the layer's module name (``None``: :func:`target_layer`).
    """

    def __init__(self, network: torch.nn.Module, image_size: int, layer: str | None = None):
        from monai.visualize import GradCAM

        if isinstance(network, torch.jit.ScriptModule) or not any(True for _ in network.parameters()):
            raise ValueError(
                "Grad-CAM needs the network's weights (models/model.pt): a TorchScript model cannot be hooked"
            )
        names = {n for n, _ in network.named_modules()}
        if layer is not None and layer not in names:
            raise ValueError(
                f"heatmap_layer {layer!r} is not a layer of {type(network).__name__}; "
                f"e.g. {sorted(n for n in names if n.count('.') <= 1)[:12]}"
            )
        self.network = network
        self.layer = layer or target_layer(network, image_size)
        self.cam = GradCAM(nn_module=network, target_layers=self.layer, postprocessing=_normalise)

    def __call__(self, image: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """Maps of one image.

        Args:
            image: the network input, (C, H, W) float.
            class_indices: the output channels to explain.

        Returns:
            (K, H, W) float32 array in [0, 1], one map per class, at the input's size.
        """
        device = next(self.network.parameters()).device
        x = torch.as_tensor(image).float()[None].to(device)
        with torch.enable_grad():
            maps = [self.cam(x, class_idx=int(c))[0, 0] for c in class_indices]
        return (
            torch.stack(maps).detach().cpu().numpy().astype(np.float32)
            if maps
            else np.zeros((0, *x.shape[2:]), np.float32)
        )


def overlay(image: torch.Tensor, heatmap: np.ndarray, size: int = 256, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the grey network input with the heatmap in the ``jet`` colours over it.

    Args:
        image: the network input (3, H, W), ImageNet-normalised (its first channel is used).
        heatmap: (H, W) in [0, 1].
        size: output height and width (bilinear).
        alpha: weight of the colours (scaled by the map itself, so cold regions stay grey).
    """
    from matplotlib import colormaps

    grey = torch.as_tensor(image).float().cpu()[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    both = torch.stack([grey.clamp(0, 1), torch.as_tensor(heatmap).float()])[None]
    grey, heat = torch.nn.functional.interpolate(both, size=(size, size), mode="bilinear", align_corners=False)[
        0
    ].numpy()
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    weight = alpha * np.clip(heat, 0, 1)[..., None]
    picture = (1 - weight) * grey[..., None] + weight * colours
    return (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "image"


def heatmap_stem(source: str, taken: dict[str, str]) -> str:
    """The file-name stem of an image's heatmaps, from which a person can find the image again.

    The stem is the image's file name without only its last suffix, so a DICOM file named by its SOP
    Instance UID keeps the whole UID (``1.2.276.0.7230010.3.1.4.8323329.5576.1517874291.dcm`` ->
    ``1.2.276.0.7230010.3.1.4.8323329.5576.1517874291``). When another image already holds that stem
    (two files of the same name in different folders), ``-`` and the first 8 hex digits of the SHA-1 of
    the full path are appended (``heatmaps.csv`` maps every heatmap to its source path).

    Args:
        source: the image's path.
        taken: stems already given, mapped to their source path; updated.
    """
    source = str(source)
    name = Path(source).name
    stem = _slug(Path(name).stem if Path(name).suffix else name)
    if stem in taken and taken[stem] != source:
        stem = f"{stem}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"
    base, n = stem, 1
    while stem in taken and taken[stem] != source:  # a hash collision: practically never
        n += 1
        stem = f"{base}-{n}"
    taken[stem] = source
    return stem


class HeatmapWriter:
    """Inference handler: per image, a Grad-CAM overlay PNG for its top classes or for named classes.

    Writes ``<output_dir>/<image name>_<class>.png`` (the image's file name without its last suffix, a
    DICOM UID kept whole; see :func:`heatmap_stem` for two images of the same name) and
    ``<output_dir>/heatmaps.csv`` (image, class, probability, layer, file). Reads the decollated
    evaluator output (``image``: the network input, ``pred``: the probabilities) and batch (images that
    could not be read are skipped). inference.json leaves it out (MONAI's ``_disabled_``) unless ``heatmaps`` is true.

    Args:
        network: the inference network (:class:`custom.BundleNetwork` or a module).
        output_dir: folder of the PNGs.
        classes: the class names, in output order.
        image_size: the input size (for the automatic layer choice).
        heatmap_classes: class names to map for every image; ``None``/empty: the ``top_k`` most probable.
        top_k: number of classes per image when ``heatmap_classes`` is not given.
        layer: the layer to compute Grad-CAM on (``None``: per architecture, see the module docstring).
        size: side of the written pictures in pixels.

    Raises:
        ValueError: (at construction) unknown class names; (on the first image) a TorchScript-only model.
    """

    def __init__(
        self,
        network,
        output_dir,
        classes: Sequence[str],
        image_size: int,
        heatmap_classes: Sequence[str] | None = None,
        top_k: int = 3,
        layer: str | None = None,
        size: int = 256,
    ):
        self.network, self.output_dir, self.classes = network, Path(output_dir), [str(c) for c in classes]
        self.image_size, self.top_k, self.layer, self.size = int(image_size), int(top_k), layer or None, int(size)
        names = [heatmap_classes] if isinstance(heatmap_classes, str) else list(heatmap_classes or [])
        unknown = [c for c in names if c not in self.classes]
        if unknown:
            raise ValueError(f"heatmap_classes {unknown} are not classes of the model; they are {self.classes}")
        self.named = [self.classes.index(c) for c in names]
        self.maps: GradCAMMaps | None = None
        self._rows: list[list] = []
        self._names: dict[str, str] = {}  # heatmap stem -> source path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: (self._rows.clear(), self._names.clear()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_index)

    def _network(self) -> torch.nn.Module:
        net = self.network.load() if hasattr(self.network, "load") else self.network
        module = getattr(net, "module", net)  # custom.serving.loaders.TorchScriptRunner wraps a TorchScript model
        if isinstance(module, torch.jit.ScriptModule):
            source = getattr(self.network, "model_file", None)
            raise ValueError(
                f"heatmaps need the weights file models/model.pt beside the TorchScript model; the inference "
                f"network was read from {source}, which cannot be hooked for Grad-CAM"
            )
        return net

    def _write_batch(self, engine: Engine) -> None:
        from PIL import Image

        if self.maps is None:
            self.maps = GradCAMMaps(self._network(), self.image_size, self.layer)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [{}] * len(engine.state.output)
        for item, source in zip(engine.state.output, batch):
            if isinstance(source, dict) and (source.get(READ_ERROR) or source.get(REFUSED)):
                continue  # an unreadable or refused image (e.g. by custom.OODGate): ProbabilityWriter lists it
            probs = torch.as_tensor(item["pred"]).float().flatten().cpu()
            chosen = self.named or probs.argsort(descending=True)[: self.top_k].tolist()
            image = item["image"]
            source = str(getattr(image, "meta", {}).get("filename_or_obj", f"image{len(self._rows)}"))
            stem = heatmap_stem(source, self._names)
            for c, heat in zip(chosen, self.maps(image, chosen)):
                path = self.output_dir / f"{stem}_{_slug(self.classes[c])}.png"
                Image.fromarray(overlay(image, heat, self.size)).save(path)
                self._rows.append([source, self.classes[c], f"{float(probs[c]):.6f}", self.maps.layer, str(path)])

    def _write_index(self, engine: Engine) -> None:
        if not self._rows:
            return
        with open(self.output_dir / "heatmaps.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "class", "probability", "layer", "heatmap"])
            writer.writerows(self._rows)
        print(f"wrote {len(self._rows)} Grad-CAM heatmap(s) to {self.output_dir}", flush=True)


def heatmap_figure(index_csv, output, count: int = 4) -> Path:
    """One PNG of ``count`` heatmaps of an inference run, each titled with its image and class.

    Made from the files ``inference.json`` wrote (``heatmaps.csv`` and its overlays), so it shows
    whatever images the run read; it is written where the caller says (e.g. the run's output folder).

    Args:
        index_csv: the run's ``heatmaps.csv``.
        output: the PNG to write.
        count: heatmaps shown (the first of distinct images, in the index's order).

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    with open(index_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    chosen, seen = [], set()
    for row in rows:
        if row["image"] not in seen:
            seen.add(row["image"])
            chosen.append(row)
    chosen = chosen[: max(1, int(count))]
    if not chosen:
        raise ValueError(f"{index_csv} lists no heatmap")
    fig, axes = plt.subplots(1, len(chosen), figsize=(3 * len(chosen), 3.4), squeeze=False)
    for ax, row in zip(axes[0], chosen):
        ax.imshow(np.asarray(Image.open(row["heatmap"])))
        ax.set_title(f"{Path(row['image']).name}\n{row['class']} {float(row['probability']):.2f}", fontsize=8)
        ax.axis("off")
    return save_figure(fig, output, dpi=100)
