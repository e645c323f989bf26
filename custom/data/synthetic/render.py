"""Rendering of the synthetic chest X-rays: anatomy, one pattern per positive disease, image style."""

from __future__ import annotations

import math

import numpy as np

from .anatomy import col, grid, render_background, sample_anatomy, uniform
from .labels import CLASSES
from .patterns import PATTERN_FUNCTIONS, change_anatomy, draw_pattern

#: Image styles: per-image gamma, contrast around mid-grey, additive offset, pixel noise
#: standard deviation, and Gaussian blur sigma in pixels (0: none).
STYLES = {
    "standard": {"gamma": (0.85, 1.15), "contrast": (0.90, 1.10), "offset": (-0.03, 0.03),
                 "noise": (0.010, 0.020), "blur_px": 0.0},
    "shifted": {"gamma": (0.70, 0.85), "contrast": (0.80, 0.90), "offset": (0.00, 0.05),
                "noise": (0.015, 0.030), "blur_px": 0.5},
}


def _blur(img, sigma):
    """Separable Gaussian blur of (n, H, W) images, sigma in pixels."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        p = np.pad(img, pad, mode="edge")
        size = img.shape[axis]
        img = sum(w * np.take(p, np.arange(i, i + size), axis=axis) for i, w in enumerate(k))
    return img


def render_images(rng, labels, image_size=32, style="standard"):
    """Render synthetic chest X-rays for clean labels.

    Args:
        rng: ``numpy.random.Generator``.
        labels: ``(N, 14)`` 0/1 clean labels in :data:`CLASSES` order; one pattern is drawn
            per positive disease.
        image_size: output height and width in pixels.
        style: a key of :data:`STYLES`.

    Returns:
        ``(N, image_size, image_size)`` uint8 array.
    """
    labels = np.asarray(labels)
    n = len(labels)
    x, y = grid(image_size)
    geo = sample_anatomy(rng, n)
    change_anatomy(rng, geo, labels, CLASSES)
    img = render_background(x, y, geo)
    for name in PATTERN_FUNCTIONS:
        idx = np.flatnonzero(labels[:, CLASSES.index(name)])
        if len(idx):
            img[idx] += draw_pattern(name, rng, x, y, geo, idx)
    S = STYLES[style]
    img = np.clip(img, 0.0, 1.0) ** col(uniform(rng, S["gamma"], n))
    img = (img - 0.5) * col(uniform(rng, S["contrast"], n)) + 0.5 + col(uniform(rng, S["offset"], n))
    if S["blur_px"] > 0:
        img = _blur(img, S["blur_px"])
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * col(uniform(rng, S["noise"], n))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
