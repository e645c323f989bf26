"""Reading the bundle's configs from code."""

from __future__ import annotations

import copy
import json
from pathlib import Path


def resolve_includes(config, root):
    """A config with every ``%file::id`` macro replaced by that id's content in ``file``.

    The bundle's own configs have no such macro (:func:`shared_texts`); a user's config or overlay may, and MONAI
    reads its file path relative to the working folder. Code that reads configs resolves them against ``root``.

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


#: the configs that carry common.json's objects, written in by :func:`sync_shared` (``python -m custom.cli docs``).
SHARED_CONFIGS = ("train.json", "inference.json")
#: the common objects' source: edit them there, then run ``python -m custom.cli docs``.
COMMON_CONFIG = "common.json"


def format_config(value, indent: int = 0) -> str:
    """A config as the bundle's JSON files lay it out: 4-space indents, a list of plain values on one line when it
    fits in 80 characters after its indentation."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {format_config(v, indent + 4)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value:
        flat = "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
        if all(not isinstance(v, (dict, list)) for v in value) and indent + len(flat) <= 80:
            return flat
        return "[\n" + ",\n".join(f"{inner}{format_config(v, indent + 4)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def shared_texts(config_dir) -> dict[Path, str]:
    """Each of :data:`SHARED_CONFIGS` as it must read: every object of common.json written in with common.json's
    content, in the place the config has it.

    The configs carry the objects themselves rather than MONAI ``%common.json::id`` macros, whose file paths MONAI
    reads relative to the working folder: so they run from any folder. ``tests/test_bundle.py`` holds them equal.

    Raises:
        KeyError: a config lacks one of common.json's ids.
    """
    config_dir = Path(config_dir)
    common = json.loads((config_dir / COMMON_CONFIG).read_text())
    texts = {}
    for name in SHARED_CONFIGS:
        path = config_dir / name
        config = json.loads(path.read_text())
        missing = [key for key in common if key not in config]
        if missing:
            raise KeyError(f"{path} lacks {missing} of {COMMON_CONFIG}: add the ids (any value), then run "
                           "python -m custom.cli docs")
        texts[path] = format_config({k: copy.deepcopy(common.get(k, v)) for k, v in config.items()}) + "\n"
    return texts


def sync_shared(config_dir) -> list[str]:
    """Write common.json's objects into :data:`SHARED_CONFIGS`; the names of the files that changed."""
    changed = []
    for path, text in shared_texts(config_dir).items():
        if path.read_text() != text:
            path.write_text(text)
            changed.append(path.name)
    return changed


#: arguments of ``python -m monai.bundle run`` that are not config ids.
RUN_ARGUMENTS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")


class UnknownSettingError(KeyError):
    """A setting (config-id override) that names nothing the config has; the message names the closest ids."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def config_ids(config) -> dict:
    """Every id of a config and its raw value: nested keys (and list indices) joined with ``#``."""
    ids: dict = {}

    def walk(value, prefix):
        if prefix:
            ids[prefix] = value
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, sub in items:
            walk(sub, f"{prefix}#{key}" if prefix else str(key))

    walk(config, "")
    return ids


def _accepted_keys(component: dict):
    """The keys a dict of the config may take beyond those it has: a component's (``_target_``) constructor
    arguments, the synthetic set's generator settings; ``None`` when anything goes (``**kwargs``)."""
    import inspect
    import pydoc

    target = component.get("_target_")
    if isinstance(target, str) and not target.startswith(("$", "@", "%")):
        if "." in target:
            found = pydoc.locate(target)
        else:
            from monai.bundle import ComponentLocator

            modules = ComponentLocator().get_component_module_name(target)
            modules = [modules] if isinstance(modules, str) else list(modules or [])
            found = next((pydoc.locate(f"{m}.{target}") for m in modules if pydoc.locate(f"{m}.{target}")), None)
    elif component.get("source") == "synthetic":
        from .data.synthetic.dataset import generate_synthetic

        found = generate_synthetic
    else:
        return set(component)
    try:
        params = inspect.signature(found).parameters
    except (TypeError, ValueError):
        return None  # nothing to check against
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params) | set(component) | {"root", "progress", "source"}


def check_overrides(config: dict, overrides) -> None:
    """Refuse a setting that names nothing in ``config`` (the merged config, ``%`` includes written in).

    An override is known when its id exists, or when it adds an argument to a component that takes it
    (``--optimizer#betas``, ``--datalist#root`` of the synthetic set); keys of MONAI's own (``_disabled_``
    ...) always are. The message names the closest ids (``did you mean max_epochs?``).

    Raises:
        UnknownSettingError: for the first unknown setting, naming every unknown one.
    """
    import difflib

    ids = config_ids(config)
    unknown = []
    for raw in overrides:
        key = str(raw).replace("::", "#")
        if key in ids:
            continue
        parent, _, name = key.rpartition("#")
        if name.startswith("_") and name.endswith("_"):  # _disabled_, _mode_, _requires_, _desc_
            continue
        if parent and isinstance(ids.get(parent), dict):
            accepted = _accepted_keys(ids[parent])
            if accepted is None or name in accepted:
                continue
            close = [f"{parent}#{c}" for c in difflib.get_close_matches(name, sorted(map(str, accepted)), n=3)]
        else:
            close = difflib.get_close_matches(key, [i for i in ids if i.count("#") == key.count("#")], n=3)
        unknown.append(f"--{raw}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    if unknown:
        raise UnknownSettingError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: the config has no such id, so "
            "it would be ignored; nothing was run"
        )


def command_line_overrides(argv) -> tuple[list[str], dict]:
    """The config files and the config-id overrides (id -> value as text) of a ``python -m monai.bundle run ...``
    command line."""
    files, keys, args = [], {}, list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            if key == "config_file":
                import ast

                try:
                    parsed = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    parsed = value
                files = [str(f) for f in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]
            elif key not in RUN_ARGUMENTS:
                keys[key] = value if eq or value else True
        i += 1
    return files, keys


def check_bundle_command(argv=None) -> None:
    """Under ``python -m monai.bundle run``: refuse unknown settings before anything is built (see
    :func:`check_overrides`). Does nothing for other programs or other ``monai.bundle`` commands."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "run":
        return
    files, values = command_line_overrides(argv[1:])
    if not files or not values:
        return
    from monai.bundle import ConfigParser

    check_overrides(resolve_includes(ConfigParser.load_config_files(files), Path.cwd()), list(values))
    from .flags import check_settings

    check_settings(values)
