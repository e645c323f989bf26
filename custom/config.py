"""Reading the bundle's configs from code."""

from __future__ import annotations

import copy
from pathlib import Path


def resolve_includes(config, root):
    """A config with every ``%file::id`` macro replaced by that id's content in ``file``.

    The repository's configs take the parts they share (network, preprocessing) from
    ``bundle/configs/common.json`` with MONAI's ``%`` macro, whose file path is relative to the
    folder the command runs in (the repository root). The deployable bundle runs from anywhere, so
    its configs carry the content itself.

    Args:
        config: a config dict (not changed).
        root: the folder the macro paths are relative to.
    """
    from monai.bundle import ConfigParser

    root = Path(root)

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, str) and value.startswith("%"):
            path, ids = ConfigParser.split_path_id(value[1:])
            if path:
                return copy.deepcopy(ConfigParser(ConfigParser.load_config_file(root / path))[ids])
        return value

    return resolve(config)
