"""Networks: building one from its definition, and loading weights from local files (checkpoints, pretrained
weights)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

#: parameters that may differ in shape from pretrained weights (the classification head).
HEAD_PATTERN = re.compile(r"^class_layers\.out\.")
#: how a network config names its number of outputs: filled in from the run record's classes when it is rebuilt.
NUM_CLASSES_REF = "@num_classes"


def build_network(name: str, num_classes: int, **kwargs) -> torch.nn.Module:
    """A network of ``monai.networks.nets`` by class name, with one output per class: a ``network_def`` target
    for networks whose output-size argument is not known in advance (``out_channels`` or ``num_classes``).

    Args:
        name: class name in ``monai.networks.nets``, e.g. ``"DenseNet121"``, ``"ResNet"``.
        num_classes: number of outputs; passed as the class's ``out_channels`` or ``num_classes``.
        kwargs: the other constructor arguments (``spatial_dims``, ``in_channels``, ...).

    The network keeps its ``network_def`` config as ``architecture`` (``num_classes`` as ``"@num_classes"``).

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
    network.architecture = {"_target_": "custom.build_network", "name": str(name), "num_classes": NUM_CLASSES_REF,
                            **kwargs}
    return network


def memory_format(channels_last, device="cpu") -> torch.memory_format:
    """``torch.channels_last`` when the flag is set (``"auto"``: with a CUDA ``device``), else
    ``torch.contiguous_format``."""
    from .flags import resolve_auto

    return torch.channels_last if resolve_auto(channels_last, device, "channels_last") else torch.contiguous_format


def prepare_network(network: torch.nn.Module, device="cpu", pretrained_weights: str = "",
                    channels_last=False) -> torch.nn.Module:
    """The network train.json trains: ``pretrained_weights`` loaded (a local file; ``""``: none, see
    :func:`load_pretrained`), moved to ``device``, its weights channels-last when ``channels_last`` (``"auto"``:
    with a CUDA ``device``, see :func:`memory_format`)."""
    network = load_pretrained(network, pretrained_weights)
    return network.to(device, memory_format=memory_format(channels_last, device))


def network_record(network) -> dict | None:
    """What a run record keeps of its network (:class:`custom.record.RunRecord`'s ``network``): the
    ``network_def`` config as it is, stock (``{"_target_": "DenseNet121", ...}``) or custom, which
    :func:`rebuild_network` builds again.

    Args:
        network: the ``network_def`` config (a dict with ``_target_``; references other than ``@num_classes``
            must be resolved to values), a config component made callable (``"_mode_": "callable"``: a
            ``functools.partial``), or a built network: one built by :func:`build_network` gives its config;
            any other gives only its class (``{"class": ...}``), and readers then use the bundle's own
            ``network_def``, checked to build that class.
    """
    import functools

    from .files import plain_json

    if network is None:
        return None
    if isinstance(network, dict):
        return plain_json({k: v for k, v in network.items() if k not in ("_desc_", "_requires_", "_disabled_")})
    if isinstance(network, functools.partial):
        func = network.func
        return plain_json({"_target_": f"{func.__module__}.{func.__qualname__}", **network.keywords})
    if isinstance(getattr(network, "architecture", None), dict):
        return plain_json(dict(network.architecture))
    return {"class": type(network).__name__}


def network_config(recorded) -> dict | None:
    """The ``network_def`` config of a recorded network (:func:`network_record`), or ``None`` when the record
    names only a class. Records of older runs (``{"name": ..., <arguments>}``, written by
    :func:`build_network` before the config was recorded) are read as :func:`build_network` configs."""
    if not isinstance(recorded, dict):
        return None
    if "_target_" in recorded:
        return dict(recorded)
    if "name" in recorded:
        return {"_target_": "custom.build_network", "num_classes": NUM_CLASSES_REF, **recorded}
    return None


def rebuild_network(recorded, num_classes: int, network_def: torch.nn.Module | None = None,
                    where: str = "the run record") -> torch.nn.Module:
    """The network a run recorded (:func:`network_record`), with ``num_classes`` outputs: the one way export,
    inference and the audit build it again. The config is built by MONAI's ``ConfigParser`` (its
    ``@num_classes`` set to ``num_classes``).

    A record naming only a class (``{"class": "DenseNet121"}``, a network given without its config) is
    served by ``network_def`` (the bundle's own), which must build that class.

    Raises:
        ValueError: the config does not build (the message names ``where``), or the record names a class that
            ``network_def`` does not build, or none.
    """
    from monai.bundle import ConfigParser

    config = network_config(recorded)
    if config is None:
        trained = recorded.get("class") if isinstance(recorded, dict) else None
        if network_def is None or (trained and type(network_def).__name__ != trained):
            built = f"builds a {type(network_def).__name__}" if network_def is not None else "is not given"
            raise ValueError(f"{where} records a {trained or recorded!r} network without its config, and the "
                             f"network_def {built}: give the network_def the model was trained with")
        return network_def
    parser = ConfigParser({"num_classes": int(num_classes), "network_def": config})
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as e:
        raise ValueError(f"{where}: the recorded network {config} cannot be built: {e}") from None
    if not isinstance(network, torch.nn.Module):
        raise ValueError(f"{where}: the recorded network {config} builds a {type(network).__name__}, not a network")
    return network


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
