"""Networks: building one from its definition, and loading weights from local files (checkpoints, pretrained
weights)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

#: parameters that may differ in shape from pretrained weights (the classification head).
HEAD_PATTERN = re.compile(r"^class_layers\.out\.")


def build_network(name: str, num_classes: int, **kwargs) -> torch.nn.Module:
    """A network of ``monai.networks.nets`` by class name, with one output per class.

    The definition (``name`` and ``kwargs``) is kept on the network as ``architecture`` so that
    a run records what it trained (:class:`custom.record.RunRecord`) and export, inference and
    the audit rebuild the same network from a checkpoint without being told.

    Args:
        name: class name in ``monai.networks.nets``, e.g. ``"DenseNet121"``, ``"ResNet"``.
        num_classes: number of outputs; passed as the class's ``out_channels`` or ``num_classes``.
        kwargs: the other constructor arguments (``spatial_dims``, ``in_channels``, ...).

    Raises:
        ValueError: no such network, or one whose output size is not an ``out_channels`` or
            ``num_classes`` argument.
    """
    from monai.networks import nets

    cls = getattr(nets, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(f"network_def: {name!r} is not a network of monai.networks.nets")
    params = inspect.signature(cls).parameters
    output = next((k for k in ("out_channels", "num_classes") if k in params), None)
    if output is None:
        raise ValueError(f"network_def: {name} takes neither 'out_channels' nor 'num_classes'")
    network = cls(**kwargs, **{output: int(num_classes)})
    network.architecture = {"name": str(name), **kwargs}
    return network


def prepare_network(network: torch.nn.Module, device="cpu", pretrained_weights: str = "",
                    channels_last=False) -> torch.nn.Module:
    """The network train.json trains: ``pretrained_weights`` loaded (a local file; ``""``: none, see
    :func:`load_pretrained`), moved to ``device``, its weights channels-last when ``channels_last`` (``"auto"``:
    with a CUDA ``device``)."""
    from .flags import resolve_auto

    network = load_pretrained(network, pretrained_weights)
    layout = torch.channels_last if resolve_auto(channels_last, device, "channels_last") else torch.contiguous_format
    return network.to(device, memory_format=layout)


def rebuildable(architecture) -> bool:
    """Whether a recorded network (:class:`custom.record.RunRecord`'s ``network``) holds a whole definition
    (:func:`build_network`'s ``name`` and arguments), rather than only the class of the config's ``network_def``."""
    return isinstance(architecture, dict) and "name" in architecture


def network_from_record(architecture: dict, num_classes: int) -> torch.nn.Module:
    """The network a run recorded (:func:`build_network` definition), with ``num_classes`` outputs."""
    if not isinstance(architecture, dict) or "name" not in architecture:
        raise ValueError(f"not a recorded network definition: {architecture!r}")
    kwargs = {k: v for k, v in architecture.items() if k != "name"}
    return build_network(architecture["name"], num_classes, **kwargs)


def _torchvision_to_monai(key: str) -> str:
    """Map a torchvision DenseNet121 parameter name onto MONAI's DenseNet121 naming."""
    key = re.sub(r"^(features\.denseblock\d+\.denselayer\d+\.)(norm|relu|conv)\.?(\d)", r"\1layers.\2\3", key)
    key = re.sub(r"^features\.norm5\.", "features.norm5.", key)
    return re.sub(r"^classifier\.", "class_layers.out.", key)


def read_checkpoint(path, kind: str = "checkpoint", hint: str = ""):
    """Load a checkpoint or weights file on the CPU with ``weights_only=True`` (no code runs).

    Raises:
        FileNotFoundError: ``"<kind> not found: <path><hint>"``.
        ValueError: ``"cannot read <kind> <path>: <reason>"`` (unpickling errors come in many types).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {kind} {path}: {_load_error(e)}") from None


def _load_error(exc: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, without PyTorch's advice to load it with
    ``weights_only=False`` (which would let the file run code: this bundle never does that)."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it holds a pickled Python object ({found.group(1)}), not only tensors; weights are read with "
                "weights_only=True so that a file can never run code: save a state dict "
                "(torch.save(model.state_dict(), path))")
    return "not a PyTorch weights file (or a corrupt one): it cannot be read with weights_only=True"


def read_state_dict(path, key: str = "model") -> dict:
    """Read a state dict from a checkpoint file with ``weights_only=True``.

    Accepts a bare state dict or a checkpoint dict holding one under ``key``.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not a readable checkpoint.
    """
    ckpt = read_checkpoint(path, "weights file")
    if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
        ckpt = ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"weights file {path} does not hold a state dict (or a checkpoint with a '{key}' entry)")
    return ckpt


def load_weights(network: torch.nn.Module, path, key: str = "model") -> torch.nn.Module:
    """Load a checkpoint's weights into ``network``, all keys and shapes matching.

    Raises:
        FileNotFoundError, ValueError: missing file, unreadable file, or keys/shapes that do not match.
    """
    state = read_state_dict(path, key)
    own = network.state_dict()
    _check_match(path, own, state)
    network.load_state_dict(state)
    return network


def load_pretrained(network: torch.nn.Module, path=None) -> torch.nn.Module:
    """Initialise ``network`` from pretrained weights in a local file; ``None``/``""`` keeps random init.

    The classification head (``class_layers.out``) is skipped when its shape differs (e.g. ImageNet's
    1,000 classes); torchvision's DenseNet121 names are mapped onto MONAI's. Every other key must be
    present with the same shape.

    Raises:
        FileNotFoundError, ValueError: missing or unreadable file, or keys/shapes that do not match.
    """
    if path in (None, ""):
        return network
    state = {_torchvision_to_monai(k): v for k, v in read_state_dict(path).items()}
    own = network.state_dict()
    head = [k for k in own if HEAD_PATTERN.match(k) and (k not in state or state[k].shape != own[k].shape)]
    in_file = {k: tuple(state[k].shape) if k in state else None for k in head}
    for k in head:
        state[k] = own[k]
    _check_match(path, own, state)
    network.load_state_dict(state)
    if head:
        shapes = ", ".join(f"{k} {tuple(own[k].shape)} (file: {in_file[k] or 'absent'})" for k in head)
        message = (f"pretrained weights {path}: the classification head does not fit this network's classes and is "
                   f"initialised afresh ({shapes}); every other layer is loaded")
        print(message, flush=True)
    return network


def _check_match(path, own: dict, state: dict) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        counts = [f"{len(v)} {what}" for v, what in ((missing, "missing key(s)"), (unexpected, "unexpected key(s)"),
                                                     (shapes, "shape mismatch(es)")) if v]
        lines = [f"weights in {path} do not match the network ({', '.join(counts)}), e.g. "
                 f"{(shapes or missing or unexpected)[0]}"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
        raise ValueError("\n".join(lines))
