"""Small helpers shared by the components."""

from __future__ import annotations


def as_bool(value, name: str = "value") -> bool:
    """A config flag as a bool; accepts ``true``/``false`` strings as given on a command line.

    Raises:
        ValueError: for a string that is not a recognised truth value.
    """
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", "none", ""):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def resolve_auto(value, device, name: str = "value") -> bool:
    """A flag that may be ``"auto"``: on when ``device`` is a CUDA device; otherwise :func:`as_bool`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        import torch

        return torch.device(device).type == "cuda"
    return as_bool(value, name)
