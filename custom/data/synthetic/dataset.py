"""Writing a synthetic data set (PNGs and ``datalist.json``) and caching it by its parameters."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pathlib
import secrets
import shutil
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...files import atomic_path, read_json
from .labels import (
    CLASSES,
    NUM_CLASSES,
    STATS_FILE,
    combo_table,
    load_label_stats,
    sample_clean_labels,
    shifted_combo_weights,
)
from .noise import apply_noise, measure_noise, parse_noise
from .render import STYLES, render_images

#: Bump when a change alters the generated data; it is part of the cache key.
GENERATOR_VERSION = 2

SPLITS = ("training", "validation", "test", "test_shifted")
NOISY_SPLITS = ("training", "validation")
_SPLIT_CODE = {"training": 1, "validation": 2, "test": 3, "test_shifted": 4}
_STREAM_CODE = {"labels": 1, "noise": 2, "images": 3}

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 512
#: Images are rendered in chunks of this many (part of the random-stream layout).
RENDER_CHUNK = 256


def default_cache_dir() -> pathlib.Path:
    """Folder for cached synthetic datasets.

    ``$NVUM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/nvum``, else ``~/.cache/nvum``.
    """
    if os.environ.get("NVUM_CACHE_DIR"):
        return pathlib.Path(os.environ["NVUM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nvum"
    return pathlib.Path.home() / ".cache" / "nvum"


def _rng(seed, split, stream):
    """Independent generator for one (split, stream) of a dataset seed."""
    return np.random.default_rng([seed, _SPLIT_CODE[split], _STREAM_CODE[stream]])


def _check_params(seed, sizes, image_size):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if sum(sizes.values()) == 0:
        raise ValueError("all split sizes are 0: nothing to generate")
    if (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise ValueError(
            f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], "
            f"got {image_size!r}")


def _prevalence(labels):
    mean = labels.mean(axis=0) if len(labels) else np.zeros(NUM_CLASSES)
    return {c: round(float(p), 6) for c, p in zip(CLASSES, mean)}


def _generate(root, *, seed=0, num_training=4000, num_validation=1000, num_test=5000,
              num_test_shifted=5000, image_size=32, noise="report", progress=True):
    sizes = {"num_training": num_training, "num_validation": num_validation,
             "num_test": num_test, "num_test_shifted": num_test_shifted}
    _check_params(seed, sizes, image_size)
    config = parse_noise(noise)
    seed, image_size = int(seed), int(image_size)
    stats = load_label_stats()
    combos, counts = combo_table(stats)
    weights = {"in_distribution": counts.astype(np.float64),
               "shifted": shifted_combo_weights(stats)}
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "datalist.json"
    path.unlink(missing_ok=True)  # an interrupted overwrite must not look complete

    datalist = {"classes": list(CLASSES)}
    measured, prevalence = {}, {}
    bar = tqdm(total=sum(sizes.values()), desc="synthetic images", unit="img",
               file=sys.stderr, disable=not progress)
    patient = 0
    for split, n in zip(SPLITS, sizes.values()):
        shifted = split == "test_shifted"
        clean = sample_clean_labels(_rng(seed, split, "labels"), n,
                                    weights["shifted" if shifted else "in_distribution"], combos)
        if split in NOISY_SPLITS:
            noisy, events = apply_noise(_rng(seed, split, "noise"), clean, config)
            measured[split] = measure_noise(clean, noisy, config, events)
        else:
            noisy = clean
        prevalence[split] = _prevalence(clean)
        (root / split).mkdir(exist_ok=True)
        rng = _rng(seed, split, "images")
        items = []
        for start in range(0, n, RENDER_CHUNK):
            stop = min(n, start + RENDER_CHUNK)
            images = render_images(rng, clean[start:stop], image_size,
                                   "shifted" if shifted else "standard")
            for i, image in zip(range(start, stop), images):
                rel = f"{split}/{i:06d}.png"
                Image.fromarray(image).save(root / rel, format="PNG")
                items.append({"image": rel, "label": noisy[i].tolist(),
                              "clean_label": clean[i].tolist(), "patient": f"syn-{patient:06d}"})
                patient += 1
            bar.update(stop - start)
        datalist[split] = items
    bar.close()

    datalist["generator"] = {
        "name": "nvum-synthetic-cxr",
        "version": GENERATOR_VERSION,
        "seed": seed,
        **sizes,
        "image_size": image_size,
        "noise": config["spec"],
        "noise_config": config,
        "label_stats": {
            "file": STATS_FILE.name,
            "sha256": hashlib.sha256(STATS_FILE.read_bytes()).hexdigest(),
            "nih_prevalence": stats["nih"]["prevalence"],
            "padchest_prevalence": stats["padchest"]["prevalence"],
        },
        "clean_prevalence": prevalence,
        "styles": {"in_distribution": STYLES["standard"], "test_shifted": STYLES["shifted"]},
        "measured_noise": measured,
    }
    with atomic_path(path, root / ".datalist.json.tmp") as tmp:  # the datalist appears last: it means "complete"
        tmp.write_text(_dumps_datalist(datalist))
    return path


def _dumps_datalist(datalist):
    """JSON text with one data item per line and an indented ``generator`` section."""
    parts = []
    for key, value in datalist.items():
        if key in SPLITS:
            body = ",\n  ".join(json.dumps(item) for item in value)
            text = f"[\n  {body}\n ]" if value else "[]"
        else:
            text = json.dumps(value, indent=1).replace("\n", "\n ")
        parts.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def generate_synthetic(root, *, seed=0, num_training=4000, num_validation=1000, num_test=5000,
                       num_test_shifted=5000, image_size=32, noise="report",
                       progress=True) -> pathlib.Path:
    """Write a synthetic dataset (PNGs and ``datalist.json``) into ``root``.

    Args:
        root: output folder (created if needed; existing files of the same names are
            overwritten).
        seed: non-negative integer; the dataset is a deterministic function of all arguments
            except ``progress``.
        num_training, num_validation, num_test, num_test_shifted: split sizes.
        image_size: image height and width in pixels (16-512).
        noise: noise specification, see :func:`parse_noise`.
        progress: show a progress bar on stderr.

    Returns:
        path of ``root/datalist.json``, written last.

    Raises:
        ValueError: on invalid sizes, seed or noise specification.
    """
    path = _generate(root, seed=seed, num_training=num_training, num_validation=num_validation,
                     num_test=num_test, num_test_shifted=num_test_shifted,
                     image_size=image_size, noise=noise, progress=progress)
    print(f"synthetic dataset written to {path.parent}")
    return path


#: Dataset parameters (everything except ``root`` and ``progress``) and their defaults.
DEFAULT_PARAMS = {k: v.default for k, v in inspect.signature(generate_synthetic).parameters.items()
                  if k not in ("root", "progress")}


def _canonical_params(params):
    defaults = DEFAULT_PARAMS
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(f"unknown synthetic dataset parameter(s): {unknown}")
    out = {**defaults, **params}
    _check_params(out["seed"], {k: out[k] for k in out if k.startswith("num_")}, out["image_size"])
    out = {k: int(v) if k != "noise" else parse_noise(v)["spec"] for k, v in out.items()}
    return out


def _params_hash(params):
    key = json.dumps({**params, "version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def ensure_synthetic(root=None, **params) -> pathlib.Path:
    """Return the datalist of a synthetic dataset, generating it only when missing.

    Args:
        root: dataset folder; ``None`` means ``default_cache_dir() / "synthetic-<hash>"``
            where ``<hash>`` identifies the parameters (and :data:`GENERATOR_VERSION`).
        **params: keyword arguments of :func:`generate_synthetic` (``progress`` included).

    Returns:
        path of ``root/datalist.json``.

    The dataset is generated into a temporary sibling folder that is renamed to ``root``
    only when complete, so an interrupted run never leaves a folder with a datalist.

    Raises:
        ValueError: when an explicit ``root`` holds a dataset made with other parameters,
            or exists with other content but no ``datalist.json``.
    """
    progress = params.pop("progress", True)
    canonical = _canonical_params(params)
    root = (default_cache_dir() / f"synthetic-{_params_hash(canonical)}" if root is None
            else pathlib.Path(root).expanduser())
    path = root / "datalist.json"
    if path.exists():
        _check_existing(path, canonical)
        return path
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists without datalist.json; remove it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _generate(tmp, progress=progress, **canonical)
        try:
            if root.exists():
                root.rmdir()  # empty folder
            os.rename(tmp, root)
        except OSError:
            if not path.exists():  # not a concurrent run finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"synthetic dataset written to {root}")
    return path


def _check_existing(path, canonical):
    try:
        found = read_json(path, "synthetic data list")["generator"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a synthetic datalist: {exc}") from None
    differ = {k: (found.get(k), v) for k, v in canonical.items() if found.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: found {a!r}, requested {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was generated with other parameters ({detail}); "
                         "remove the folder or choose another root")


def synthetic_datalist(root=None, **params):
    """The built-in synthetic chest X-ray data list, generated on first use (:func:`ensure_synthetic`).

    Returns:
        a :class:`custom.data.datalist.DataList` of the generated set.
    """
    from ..datalist import DataList

    return DataList(ensure_synthetic(root, **params))
