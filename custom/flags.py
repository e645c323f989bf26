"""Small helpers shared by the components: flags from the command line, and the numeric settings' rules."""

from __future__ import annotations


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "none", "")


def truth_word(value) -> bool | None:
    """``True``/``False`` for a bool, ``None`` or a truth word as given on a command line (``true``, ``yes``, ``off``,
    ``none``, ...); ``None`` for anything else (a setting that also takes other values, such as a path). The one
    place the words are listed."""
    if value is None or isinstance(value, bool):
        return bool(value)
    lowered = str(value).strip().lower()
    return True if lowered in TRUE_WORDS else False if lowered in FALSE_WORDS else None


def as_bool(value, name: str = "value") -> bool:
    """A config flag as a bool; accepts ``true``/``false`` strings as given on a command line.

    Raises:
        ValueError: for a string that is not a recognised truth value.
    """
    if isinstance(value, str):
        word = truth_word(value)
        if word is None:
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return word
    return bool(value)


def resolve_auto(value, device, name: str = "value") -> bool:
    """A flag that may be ``"auto"``: on when ``device`` is a CUDA device; otherwise :func:`as_bool`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        import torch

        return torch.device(device).type == "cuda"
    return as_bool(value, name)


#: settings that must be numbers, and what they must be.
NUMERIC_SETTINGS = {
    "image_size": ("a positive integer", lambda v: isinstance(v, int) and v > 0),
    "batch_size": ("a positive integer", lambda v: isinstance(v, int) and v > 0),
    "max_epochs": ("a positive integer", lambda v: isinstance(v, int) and v > 0),
    "val_interval": ("a positive integer", lambda v: isinstance(v, int) and v > 0),
    "num_workers": ("an integer >= 0", lambda v: isinstance(v, int) and v >= 0),
    "seed": ("an integer", lambda v: isinstance(v, int)),
    "learning_rate": ("a positive finite number",
                      lambda v: isinstance(v, (int, float)) and 0 < float(v) < float("inf")),
}


class InvalidSettingError(ValueError):
    """A setting whose value cannot work (``--image_size 0``, ``--learning_rate nan``); names the setting."""


def _value(text):
    """A command-line value as the bundle command reads it (numbers, lists, ...; anything else stays text)."""
    import ast

    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_settings(values: dict) -> None:
    """Refuse settings of :data:`NUMERIC_SETTINGS` with values that cannot work, naming every one.

    ``values`` maps ids to values (as given on a command line, or as the config parsed them); an
    expression (``$...``) or reference (``@...``) is not checked. ``bool`` is not an integer here.
    """
    bad = []
    for key, raw in values.items():
        rule = NUMERIC_SETTINGS.get(str(key))
        value = _value(raw)
        if rule is None or (isinstance(value, str) and value.startswith(("$", "@", "%"))):
            continue
        what, ok = rule
        if isinstance(value, bool) or not ok(value):
            bad.append(f"{key} must be {what}, got {raw!r}")
    if bad:
        raise InvalidSettingError("invalid setting" + ("s" if len(bad) > 1 else "") + ": " + "; ".join(bad))
