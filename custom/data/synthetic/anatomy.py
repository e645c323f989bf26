"""Background anatomy of the synthetic chest X-rays and the geometry helpers the patterns use.

Images
------
Coordinates are normalised: the image spans ``[-1, 1]`` in x (left to right) and y (top
to bottom), so lengths below are fractions of half the image width (0.1 = 1.6 px at 32 px).
The patient's right lung is on the image left, the heart bulges to the image right.

Background (:data:`ANATOMY`), with patient-level variation of position, size, aspect and
of every grey level: a soft-tissue body ellipse on a dark background; two dark elliptical
lung fields; a bright mediastinum and spine down the middle; a bright heart ellipse low
and to the image right; faint curved ribs across the lungs; then a per-image gamma and
contrast, Gaussian pixel noise and 8-bit quantisation (:data:`STYLES`).
"""

from __future__ import annotations

import numpy as np


#: Background anatomy; ``(lo, hi)`` are uniform per-image ranges.
ANATOMY = {
    "shift_sd": 0.04,  # body position jitter (x and y)
    "scale": (0.90, 1.08),  # overall size
    "aspect": (0.94, 1.06),  # width / height
    "outside_level": (0.02, 0.08),  # air around the body
    "body_level": (0.42, 0.56),  # soft tissue
    "body_axes": (0.92, 1.15),  # semi-axes of the body ellipse
    "lung_level": (0.14, 0.26),  # lung fields
    "lung_center": (0.38, -0.06),  # |x| and y of the lung centres
    "lung_axes": (0.27, 0.57),  # semi-axes of a lung ellipse
    "lung_size_jitter": (0.90, 1.10),  # per-lung extra size factor
    "edge": 0.05,  # softness of organ edges
    "mediastinum_level": (0.55, 0.68),
    "mediastinum_half_width": 0.12,
    "spine_level": (0.04, 0.09),  # added along the midline
    "heart_level": (0.64, 0.78),
    "heart_center": (0.12, 0.28),  # x, y
    "heart_axes": (0.30, 0.24),
    "heart_size": (0.85, 1.15),  # normal heart size variation
    "rib_level": (0.03, 0.07),
    "rib_spacing": (0.20, 0.26),
    "rib_curvature": (0.25, 0.45),
}


def uniform(rng, bounds, size):
    lo, hi = bounds
    return rng.uniform(lo, hi, size).astype(np.float32)


def col(v):
    """(n,) -> (n, 1, 1) for broadcasting against (H, W) grids."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def soft_inside(r, edge):
    """Smooth indicator of ``r < 1`` (0.5 on the boundary)."""
    return 0.5 - 0.5 * np.tanh((r - 1.0) / (2.0 * edge))


def ellipse_r(x, y, cx, cy, a, b):
    return np.sqrt(((x - col(cx)) / col(a)) ** 2 + ((y - col(cy)) / col(b)) ** 2)


def gauss(x, y, cx, cy, sx, sy=None):
    sy = sx if sy is None else sy
    return np.exp(-0.5 * (((x - col(cx)) / col(sx)) ** 2 + ((y - col(cy)) / col(sy)) ** 2))


def grid(size):
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y  # (H, W) each


def sample_anatomy(rng, n):
    """Per-image anatomy parameters: dict of (n,) float32 arrays (lungs: (n, 2))."""
    A = ANATOMY
    scale = uniform(rng, A["scale"], n)
    aspect = uniform(rng, A["aspect"], n)
    sx, sy = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
    cx = rng.normal(0.0, A["shift_sd"], n).astype(np.float32)
    cy = rng.normal(0.0, A["shift_sd"], n).astype(np.float32)
    lung_jit = uniform(rng, A["lung_size_jitter"], (n, 2))
    heart_size = uniform(rng, A["heart_size"], n)
    side = np.array([-1.0, 1.0], dtype=np.float32)  # image-left lung, image-right lung
    geo = {
        "cx": cx, "cy": cy, "sx": sx, "sy": sy,
        "outside": uniform(rng, A["outside_level"], n),
        "body": uniform(rng, A["body_level"], n),
        "body_a": A["body_axes"][0] * sx, "body_b": A["body_axes"][1] * sy,
        "lung": uniform(rng, A["lung_level"], n),
        "lung_cx": cx[:, None] + side * A["lung_center"][0] * sx[:, None],
        "lung_cy": cy[:, None] + A["lung_center"][1] * sy[:, None] + np.zeros((n, 2), np.float32),
        "lung_a": A["lung_axes"][0] * sx[:, None] * lung_jit,
        "lung_b": A["lung_axes"][1] * sy[:, None] * lung_jit,
        "mediastinum": uniform(rng, A["mediastinum_level"], n),
        "spine": uniform(rng, A["spine_level"], n),
        "heart": uniform(rng, A["heart_level"], n),
        "heart_cx": cx + A["heart_center"][0] * sx,
        "heart_cy": cy + A["heart_center"][1] * sy,
        "heart_a": A["heart_axes"][0] * sx * heart_size,
        "heart_b": A["heart_axes"][1] * sy * heart_size,
        "rib": uniform(rng, A["rib_level"], n),
        "rib_spacing": uniform(rng, A["rib_spacing"], n) * sy,
        "rib_curv": uniform(rng, A["rib_curvature"], n),
        "rib_phase": uniform(rng, (0.0, 2 * np.pi), n),
    }
    return geo


def lung_masks(x, y, geo, idx=None):
    """Soft masks of both lungs: (n, 2, H, W) float32 and the radial coordinate r."""
    sel = slice(None) if idx is None else idx
    e = ANATOMY["edge"]
    masks, radii = [], []
    for k in range(2):
        r = ellipse_r(x, y, geo["lung_cx"][sel, k], geo["lung_cy"][sel, k],
                       geo["lung_a"][sel, k], geo["lung_b"][sel, k])
        radii.append(r)
        masks.append(soft_inside(r, e))
    return np.stack(masks, axis=1), np.stack(radii, axis=1)


def render_background(x, y, geo):
    """Chest background: (n, H, W) float32 grey levels."""
    e = ANATOMY["edge"]
    body_r = ellipse_r(x, y, geo["cx"], geo["cy"] + 0.05, geo["body_a"], geo["body_b"])
    body = soft_inside(body_r, e)
    img = col(geo["outside"]) + body * col(geo["body"] - geo["outside"])
    # mediastinum and spine: a bright vertical band down the middle
    half = ANATOMY["mediastinum_half_width"] * geo["sx"]
    band = np.exp(-0.5 * ((x - col(geo["cx"])) / col(half)) ** 4) * body
    img = img + band * col(geo["mediastinum"] - geo["body"])
    lungs, _ = lung_masks(x, y, geo)
    lung = np.clip(lungs.sum(axis=1), 0.0, 1.0) * (1.0 - 0.6 * band)
    # ribs: faint curved bands inside the lungs, bending down laterally
    dx = x - col(geo["cx"])
    phase = 2 * np.pi * (y - col(geo["rib_curv"]) * dx ** 2) / col(geo["rib_spacing"])
    ribs = (0.5 + 0.5 * np.cos(phase + col(geo["rib_phase"]))) ** 3
    img = img * (1 - lung) + lung * (col(geo["lung"]) + col(geo["rib"]) * ribs)
    img = img + col(geo["spine"]) * np.exp(-0.5 * (dx / col(0.05 * geo["sx"])) ** 2) * body
    heart = soft_inside(ellipse_r(x, y, geo["heart_cx"], geo["heart_cy"], geo["heart_a"],
                                    geo["heart_b"]), e)
    img = img * (1 - heart) + heart * col(geo["heart"])
    return img


def lung_points(rng, geo, idx, side, u_range, v_range, margin=0.8):
    """Random points inside the given lung of images ``idx``.

    ``u`` is the lateral coordinate (-1 medial, +1 lateral) and ``v`` the vertical one
    (-1 apex, +1 base) in lung-ellipse units; points are pulled inside radius ``margin``.

    Returns:
        tuple of (n,) float32 arrays ``(x, y)``.
    """
    n = len(idx)
    u, v = uniform(rng, u_range, n), uniform(rng, v_range, n)
    r = np.sqrt(u ** 2 + v ** 2)
    shrink = np.where(r > margin, margin / np.maximum(r, 1e-6), 1.0)
    u, v = u * shrink, v * shrink
    sign = np.where(side == 0, -1.0, 1.0)
    px = geo["lung_cx"][idx, side] + sign * u * geo["lung_a"][idx, side]
    py = geo["lung_cy"][idx, side] + v * geo["lung_b"][idx, side]
    return px.astype(np.float32), py.astype(np.float32)


def blob(x, y, cx, cy, radius):
    """Round opacity with a soft edge, 1 inside: (n, H, W)."""
    r = np.sqrt((x - col(cx)) ** 2 + (y - col(cy)) ** 2) / col(radius)
    return soft_inside(r, 0.25)
