"""Out-of-distribution sets the test report measures the gate on (:mod:`.ood`), made from files that ship with
installed packages (nothing is downloaded) and from the test images themselves, written as PNG files so they
take the path every PNG takes:

- ``pydicom``: the images among pydicom's own test files (``pydicom.data.get_testdata_files()``: CT, MR, US,
  NM, RT dose, secondary captures, ...), first frame, scaled to 8 bits by their 1st-99th percentiles; files
  without pixel data, that cannot be decoded here, or whose Modality is a radiograph (CR, DX, RG) are left
  out, and images identical at 32 x 32 are kept once;
- ``photos``: scikit-learn's two sample photos (``load_sample_images()``), each whole, as 9 tiles (3 x 3) and
  as 6 random square crops (seed 0): 32 images;
- ``rotated_90``, ``upside_down``, ``inverted``, ``quarter_crop``: test chest X-rays (the first
  :data:`MAX_TRANSFORMED` of the first test set) turned 90 degrees, flipped upside down, with inverted grey
  levels, or cut to their top-left quarter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

#: the most test images transformed per transformed set.
MAX_TRANSFORMED = 200
#: the sets of non-chest images (the refusal targets); the others are transformed chest X-rays.
NON_CHEST_SETS = ("pydicom", "photos")
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    low, high = np.percentile(array, [1, 99])
    if high <= low:
        low, high = float(array.min()), float(array.max())
    return (np.clip((array - low) / max(high - low, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def _save(array: np.ndarray, path: Path, seen: set) -> bool:
    from PIL import Image

    image = Image.fromarray(array)
    key = hashlib.sha1(np.asarray(image.convert("L").resize((32, 32))).tobytes()).hexdigest()
    if key in seen:
        return False
    seen.add(key)
    image.save(path)
    return True


def pydicom_images(folder) -> list[Path]:
    """pydicom's test images as PNG files in ``folder`` (see the module docstring)."""
    import logging

    from pydicom.data import get_testdata_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out, seen = [], set()
    logger = logging.getLogger("pydicom")
    level, logger.level = logger.level, logging.CRITICAL  # files made to fail (no decoder, bombs) log errors
    try:
        for i, name in enumerate(sorted(get_testdata_files())):
            _render(i, name, folder, out, seen)
    finally:
        logger.setLevel(level)
    return out


def _render(i: int, name: str, folder: Path, out: list, seen: set) -> None:
    """Render one of pydicom's test files into ``folder`` when it is a non-radiograph image (module docstring)."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(name)
            if "PixelData" not in ds or str(ds.get("Modality", "")).upper() in RADIOGRAPH_MODALITIES:
                return
            pixels = np.asarray(ds.pixel_array)
    except Exception:  # not an image, or a syntax without a decoder here
        return
    rgb = str(ds.get("PhotometricInterpretation", "")).upper() not in ("MONOCHROME1", "MONOCHROME2", "")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if rgb and pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = pixels.mean(axis=-1)
    if pixels.ndim != 2 or min(pixels.shape) < 16:
        return
    path = folder / f"pydicom_{i:03d}_{Path(name).stem}.png"
    if _save(_to_uint8(pixels), path, seen):
        out.append(path)


def photo_images(folder, seed: int = 0) -> list[Path]:
    """scikit-learn's two sample photos, whole, in 3 x 3 tiles and as 6 random square crops each (32 PNG files)."""
    from sklearn.datasets import load_sample_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for p, photo in enumerate(load_sample_images().images):
        h, w = photo.shape[:2]
        crops = [photo]
        crops += [photo[r * h // 3 : (r + 1) * h // 3, c * w // 3 : (c + 1) * w // 3]
                  for r in range(3) for c in range(3)]
        for _ in range(6):
            side = int(rng.integers(min(h, w) // 4, min(h, w)))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(photo[top : top + side, left : left + side])
        for k, crop in enumerate(crops):
            path = folder / f"photo{p}_{k:02d}.png"
            if _save(np.ascontiguousarray(crop), path, seen):
                out.append(path)
    return out


TRANSFORMS = {
    "rotated_90": lambda a: np.rot90(a),
    "upside_down": lambda a: a[::-1],
    "inverted": lambda a: 255 - a,
    "quarter_crop": lambda a: a[: a.shape[0] // 2, : a.shape[1] // 2],
}


def transformed_images(images: Sequence, folder) -> dict[str, list[Path]]:
    """The chest X-rays ``images`` (file paths; the first :data:`MAX_TRANSFORMED` PNG/JPEG ones) under each of
    :data:`TRANSFORMS`, as 8-bit grey PNG files in ``folder/<name>/``."""
    from PIL import Image

    folder = Path(folder)
    out = {name: [] for name in TRANSFORMS}
    picked = [Path(p) for p in images if Path(p).suffix.lower() in (".png", ".jpg", ".jpeg")][:MAX_TRANSFORMED]
    for name in TRANSFORMS:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(picked):
        with Image.open(source) as img:
            array = np.asarray(img.convert("L"))
        for name, transform in TRANSFORMS.items():
            path = folder / name / f"{i:04d}_{source.stem}.png"
            Image.fromarray(np.ascontiguousarray(transform(array))).save(path)
            out[name].append(path)
    return out


def ood_sets(folder, test_images: Sequence) -> dict[str, list[Path]]:
    """Every out-of-distribution set of the module docstring, written under ``folder``: name -> PNG files."""
    folder = Path(folder)
    sets = {"pydicom": pydicom_images(folder / "pydicom"), "photos": photo_images(folder / "photos")}
    sets.update(transformed_images(test_images, folder / "transformed"))
    return {name: files for name, files in sets.items() if files}


def ood_table(test_distances: dict[str, np.ndarray], ood_distances: dict[str, np.ndarray], threshold: float):
    """The report's table: one row per test split (``kind`` test: share accepted) and per out-of-distribution set
    (share accepted, and AUROC of the distance against all the test images together)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    rows = [{"set": name, "kind": "test", "images": len(d), "accepted": float((d <= threshold).mean()),
             "auroc": np.nan} for name, d in test_distances.items() if len(d)]
    inside = np.concatenate([d for d in test_distances.values()]) if test_distances else np.zeros(0)
    for name, d in ood_distances.items():
        auroc = np.nan
        if len(d) and len(inside):
            auroc = float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(d))], np.r_[inside, d]))
        kind = "non-chest" if name in NON_CHEST_SETS else "transformed chest X-ray"
        rows.append({"set": name, "kind": kind, "images": len(d),
                     "accepted": float((d <= threshold).mean()) if len(d) else np.nan, "auroc": auroc})
    return pd.DataFrame(rows, columns=["set", "kind", "images", "accepted", "auroc"])


def ood_markdown(table) -> str:
    """The table of :func:`ood_table` in Markdown: shares in percent, AUROC to 4 decimals (as the report shows it)."""
    from .tables import format_value, frame_markdown

    shown = table.assign(accepted=table["accepted"].map(lambda v: f"{v:.1%}"), auroc=table["auroc"].map(format_value))
    return frame_markdown(shown)
