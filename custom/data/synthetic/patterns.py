"""Disease patterns of the synthetic chest X-rays: one function per class, in a table.

Disease patterns (:data:`PATTERNS`): one per positive disease of the clean label; each
strength (grey levels on the 0-1 scale), size and position is drawn per image from the
ranges in :data:`PATTERNS`, so some cases are faint. Positions are random in the stated
zone of a randomly chosen lung.

Atelectasis
    a thin bright plate-like streak (half-length 0.12-0.22, tilted up to 25 degrees) in the
    middle or lower zone of one lung.
Cardiomegaly
    the heart ellipse is widened (x1.20-1.45) and up to 15% taller; the normal heart size
    varies by +-15%, so mild cases overlap with normal hearts.
Effusion (pair: Edema)
    basal haze: the base of one lung (both in 35% of cases) becomes brighter below a fluid
    level that rises towards the lateral chest wall (meniscus).
Infiltration (pair: Pneumonia)
    diffuse patchiness: 8-14 faint broad Gaussian blobs scattered over both lungs.
Mass (pair: Nodule)
    one bright round blob of radius 0.13-0.20.
Nodule (pair: Mass)
    the same blob with radius 0.06-0.09 (a little brighter); a second nodule in 30% of cases.
Pneumonia (pair: Infiltration)
    focal patchiness: 5-8 stronger, smaller blobs clustered (sd 0.12) around one point of
    the middle or lower zone of one lung.
Pneumothorax
    in one lung the lung edge collapses towards the hilum (to 62-82% of its size): the rim
    between the chest wall and the collapsed edge gets darker and a thin bright pleural
    line marks the edge.
Edema (pair: Effusion)
    bilateral perihilar ("bat-wing") haze: a broad Gaussian brightening around both hila.
Emphysema
    hyperinflation: taller (x1.05-1.14), slightly wider and darker lung fields with low,
    flat bases.
Fibrosis
    a reticular net (a square grid texture of wavelength 0.18-0.24) over the lower and
    lateral parts of both lungs.
Pleural_Thickening
    a bright band along the lateral edge of one lung (both in 30% of cases).
Hernia
    a round retrocardiac opacity low in the midline with a dark air bubble inside.
No Finding
    no pattern.

The three similar pairs (Mass/Nodule, Infiltration/Pneumonia, Effusion/Edema) are also
the pairs that the ``report`` noise model confuses.

Generator version 2 made the smallest patterns larger and some stronger (Nodule, Mass, Fibrosis,
Pleural_Thickening, Hernia, Cardiomegaly) so that every class can be learnt from 32 px images:
in version 1 a nodule was 1-2 px across and the fibrosis net had a 2 px period, at the limit of
what a network keeping the full 32 px resolution sees (bundle/docs/results.md). The choice was
made on the validation split of clean-label runs; the label statistics and the noise models did
not change.
"""

from __future__ import annotations

import numpy as np

from .anatomy import ANATOMY, blob, col, ellipse_r, gauss, lung_masks, lung_points, soft_inside, uniform

#: Class patterns (see the module docstring); ``(lo, hi)`` are uniform per-image ranges.
PATTERNS = {
    "Atelectasis": {"strength": (0.12, 0.24), "half_length": (0.12, 0.22),
                    "thickness": (0.025, 0.045), "tilt_deg": (-25.0, 25.0),
                    "zone_v": (0.0, 0.6)},
    "Cardiomegaly": {"width_factor": (1.20, 1.45), "height_factor": (1.00, 1.15)},
    "Effusion": {"strength": (0.05, 0.15), "level_v": (0.30, 0.65), "meniscus": (0.15, 0.35),
                 "edge": 0.06, "bilateral_p": 0.35},
    "Infiltration": {"strength": (0.04, 0.09), "count": (8, 14), "sigma": (0.05, 0.09)},
    "Mass": {"strength": (0.18, 0.32), "radius": (0.13, 0.20)},
    "Nodule": {"strength": (0.25, 0.40), "radius": (0.06, 0.09), "second_p": 0.3},
    "Pneumonia": {"strength": (0.07, 0.14), "count": (5, 8), "sigma": (0.04, 0.07),
                  "spread": 0.12, "zone_v": (-0.3, 0.6)},
    "Pneumothorax": {"darkening": (0.04, 0.10), "line": (0.05, 0.12),
                     "collapse": (0.62, 0.82), "line_width": 0.03},
    "Edema": {"strength": (0.05, 0.13), "sigma_x": (0.14, 0.20), "sigma_y": (0.20, 0.30),
              "hilum_u": -0.45},
    "Emphysema": {"height_factor": (1.05, 1.14), "width_factor": (1.00, 1.06),
                  "darkening": (0.02, 0.06)},
    "Fibrosis": {"strength": (0.15, 0.25), "wavelength": (0.18, 0.24)},
    "Pleural_Thickening": {"strength": (0.12, 0.22), "width": (0.06, 0.09),
                           "bilateral_p": 0.3},
    "Hernia": {"strength": (0.22, 0.34), "radius": (0.12, 0.18), "air": (0.14, 0.22),
               "center": (0.02, 0.45)},
}


# --------------------------------------------------------------------------------------
# Classes that change the anatomy (applied to the geometry before the background is drawn)
# --------------------------------------------------------------------------------------


def _cardiomegaly(rng, geo, idx, P):
    wf, hf = uniform(rng, P["width_factor"], len(idx)), uniform(rng, P["height_factor"], len(idx))
    geo["heart_a"][idx] *= wf
    geo["heart_b"][idx] *= hf
    geo["heart_cy"][idx] -= (hf - 1) * geo["heart_b"][idx] * 0.5  # grows upwards


def _emphysema(rng, geo, idx, P):
    hf, wf = uniform(rng, P["height_factor"], len(idx)), uniform(rng, P["width_factor"], len(idx))
    geo["lung_b"][idx] *= hf[:, None]
    geo["lung_a"][idx] *= wf[:, None]
    geo["lung_cy"][idx] += (0.5 * (hf - 1))[:, None] * geo["lung_b"][idx]  # flat, low domes
    geo["lung"][idx] -= uniform(rng, P["darkening"], len(idx))


#: class -> function(rng, geo, idx, params) changing the geometry of images ``idx`` in place.
ANATOMY_CHANGES = {"Cardiomegaly": _cardiomegaly, "Emphysema": _emphysema}


# --------------------------------------------------------------------------------------
# Classes drawn on top of the background: function(rng, x, y, geo, idx, side, params) -> (n, H, W)
# --------------------------------------------------------------------------------------


def _atelectasis(rng, x, y, geo, idx, side, P):
    n = len(idx)
    px, py = lung_points(rng, geo, idx, side, (-0.5, 0.5), P["zone_v"])
    theta = np.deg2rad(uniform(rng, P["tilt_deg"], n))
    half, thick = uniform(rng, P["half_length"], n), uniform(rng, P["thickness"], n)
    dx, dy = x - col(px), y - col(py)
    along = dx * col(np.cos(theta)) + dy * col(np.sin(theta))
    across = -dx * col(np.sin(theta)) + dy * col(np.cos(theta))
    streak = (np.exp(-0.5 * (across / col(thick)) ** 2)
              * soft_inside(np.abs(along) / col(half), 0.15))
    return col(uniform(rng, P["strength"], n)) * streak


def _effusion(rng, x, y, geo, idx, side, P):
    n = len(idx)
    lungs, _ = lung_masks(x, y, geo, idx)
    both = rng.random(n) < P["bilateral_p"]
    out = np.zeros((n,) + x.shape, np.float32)
    strength = uniform(rng, P["strength"], n)
    for k in range(2):
        on = (both | (side == k)).astype(np.float32)
        level = geo["lung_cy"][idx, k] + uniform(rng, P["level_v"], n) * geo["lung_b"][idx, k]
        sign = -1.0 if k == 0 else 1.0
        lateral = (x - col(geo["lung_cx"][idx, k])) * sign / col(geo["lung_a"][idx, k])
        rise = uniform(rng, P["meniscus"], n) * geo["lung_b"][idx, k]
        surface = col(level) - col(rise) * np.clip(lateral, 0, 1) ** 2
        fluid = 0.5 + 0.5 * np.tanh((y - surface) / (2 * P["edge"]))
        out += col(on * strength) * fluid * lungs[:, k]
    return out


def _patchy(rng, x, y, geo, idx, side, P, focal):
    """Infiltration (diffuse blobs over both lungs) or, with ``focal``, Pneumonia (a cluster)."""
    n = len(idx)
    out = np.zeros((n,) + x.shape, np.float32)
    lo, hi = P["count"]
    counts = rng.integers(lo, hi + 1, n)
    if focal:
        cx, cy = lung_points(rng, geo, idx, side, (-0.4, 0.6), P["zone_v"], margin=0.7)
    for j in range(hi):
        on = (j < counts).astype(np.float32)
        if not focal:
            s = rng.integers(0, 2, n)
            bx, by = lung_points(rng, geo, idx, s, (-0.9, 0.9), (-0.9, 0.9))
        else:
            off = rng.normal(0.0, P["spread"], (2, n)).astype(np.float32)
            bx, by = cx + off[0], cy + off[1]
        amp = uniform(rng, P["strength"], n) * on
        out += col(amp) * gauss(x, y, bx, by, uniform(rng, P["sigma"], n))
    lungs, _ = lung_masks(x, y, geo, idx)
    return out * np.clip(lungs.sum(axis=1), 0, 1)


def _infiltration(rng, x, y, geo, idx, side, P):
    return _patchy(rng, x, y, geo, idx, side, P, focal=False)


def _pneumonia(rng, x, y, geo, idx, side, P):
    return _patchy(rng, x, y, geo, idx, side, P, focal=True)


def _round_opacity(rng, x, y, geo, idx, side, P, second):
    """Mass, or with ``second`` Nodule (a second one in ``second_p`` of the images)."""
    n = len(idx)
    px, py = lung_points(rng, geo, idx, side, (-0.7, 0.8), (-0.7, 0.7), margin=0.75)
    out = col(uniform(rng, P["strength"], n)) * blob(x, y, px, py, uniform(rng, P["radius"], n))
    if second:
        on = (rng.random(n) < P["second_p"]).astype(np.float32)
        other_side = rng.integers(0, 2, n)
        qx, qy = lung_points(rng, geo, idx, other_side, (-0.7, 0.8), (-0.7, 0.7), 0.75)
        amp = uniform(rng, P["strength"], n) * on
        out += col(amp) * blob(x, y, qx, qy, uniform(rng, P["radius"], n))
    return out


def _mass(rng, x, y, geo, idx, side, P):
    return _round_opacity(rng, x, y, geo, idx, side, P, second=False)


def _nodule(rng, x, y, geo, idx, side, P):
    return _round_opacity(rng, x, y, geo, idx, side, P, second=True)


def _pneumothorax(rng, x, y, geo, idx, side, P):
    n = len(idx)
    k = side
    lcx, lcy = geo["lung_cx"][idx, k], geo["lung_cy"][idx, k]
    la, lb = geo["lung_a"][idx, k], geo["lung_b"][idx, k]
    sign = np.where(k == 0, -1.0, 1.0).astype(np.float32)
    collapse = uniform(rng, P["collapse"], n)
    # collapsed lung: shrunk towards the hilum (medial, slightly low)
    ccx = lcx - sign * (1 - collapse) * la
    ccy = lcy + 0.5 * (1 - collapse) * lb
    r_lung = ellipse_r(x, y, lcx, lcy, la, lb)
    r_coll = ellipse_r(x, y, ccx, ccy, collapse * la, collapse * lb)
    lung = soft_inside(r_lung, ANATOMY["edge"])
    rim = lung * (1 - soft_inside(r_coll, ANATOMY["edge"]))
    line = np.exp(-0.5 * ((r_coll - 1) * col(collapse * la) / P["line_width"]) ** 2) * lung
    return -col(uniform(rng, P["darkening"], n)) * rim + col(uniform(rng, P["line"], n)) * line


def _edema(rng, x, y, geo, idx, side, P):
    n = len(idx)
    lungs, _ = lung_masks(x, y, geo, idx)
    sx_, sy_ = uniform(rng, P["sigma_x"], n), uniform(rng, P["sigma_y"], n)
    amp = uniform(rng, P["strength"], n)
    out = np.zeros((n,) + x.shape, np.float32)
    for k in range(2):
        sign = -1.0 if k == 0 else 1.0
        hx = geo["lung_cx"][idx, k] + sign * P["hilum_u"] * geo["lung_a"][idx, k]
        hy = geo["lung_cy"][idx, k] + 0.05 * geo["lung_b"][idx, k]
        out += gauss(x, y, hx, hy, sx_, sy_) * lungs[:, k]
    return col(amp) * out


def _fibrosis(rng, x, y, geo, idx, side, P):
    n = len(idx)
    lungs, _ = lung_masks(x, y, geo, idx)
    wl = uniform(rng, P["wavelength"], n)
    ph = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)
    net = 0.25 * (np.cos(2 * np.pi * x / col(wl) + col(ph[0]))
                  + np.cos(2 * np.pi * y / col(wl) + col(ph[1]))) ** 2
    out = np.zeros((n,) + x.shape, np.float32)
    for k in range(2):
        sign = -1.0 if k == 0 else 1.0
        lateral = (x - col(geo["lung_cx"][idx, k])) * sign / col(geo["lung_a"][idx, k])
        lower = (y - col(geo["lung_cy"][idx, k])) / col(geo["lung_b"][idx, k])
        weight = np.clip(0.5 + 0.6 * lower + 0.4 * lateral, 0, 1)
        out += weight * lungs[:, k]
    return col(uniform(rng, P["strength"], n)) * net * out


def _pleural_thickening(rng, x, y, geo, idx, side, P):
    n = len(idx)
    both = rng.random(n) < P["bilateral_p"]
    width = uniform(rng, P["width"], n)
    amp = uniform(rng, P["strength"], n)
    out = np.zeros((n,) + x.shape, np.float32)
    for k in range(2):
        on = (both | (side == k)).astype(np.float32)
        sign = -1.0 if k == 0 else 1.0
        lcx, lcy = geo["lung_cx"][idx, k], geo["lung_cy"][idx, k]
        la, lb = geo["lung_a"][idx, k], geo["lung_b"][idx, k]
        r = ellipse_r(x, y, lcx, lcy, la, lb)
        lateral = (x - col(lcx)) * sign / col(la)
        band = np.exp(-0.5 * ((r - 0.97) * col(la) / col(width)) ** 2)
        out += col(on * amp) * band * np.clip(2.5 * lateral - 0.25, 0, 1)
    return out


def _hernia(rng, x, y, geo, idx, side, P):
    n = len(idx)
    jitter_x = rng.normal(0, 0.04, n).astype(np.float32)
    jitter_y = rng.normal(0, 0.03, n).astype(np.float32)
    hx = geo["cx"][idx] + P["center"][0] * geo["sx"][idx] + jitter_x
    hy = geo["cy"][idx] + P["center"][1] * geo["sy"][idx] + jitter_y
    radius = uniform(rng, P["radius"], n)
    body = blob(x, y, hx, hy, radius)
    air = blob(x, y, hx + 0.2 * radius, hy - 0.3 * radius, 0.45 * radius)
    return col(uniform(rng, P["strength"], n)) * body - col(uniform(rng, P["air"], n)) * air


#: class -> function drawing its additive grey-level pattern on images ``idx``; every disease that
#: does not change the anatomy has one, in the order the renderer draws them (the random streams
#: depend on that order).
PATTERN_FUNCTIONS = {
    "Atelectasis": _atelectasis,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Edema": _edema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}


def draw_pattern(name, rng, x, y, geo, idx):
    """Additive grey-level pattern of class ``name`` for the images ``idx``: (n, H, W) float32.

    One lung side per image is drawn first (used by the one-sided patterns), then the class's own draws.
    """
    side = rng.integers(0, 2, len(idx))
    return PATTERN_FUNCTIONS[name](rng, x, y, geo, idx, side, PATTERNS[name])


def change_anatomy(rng, geo, labels, classes):
    """Apply the classes that change the anatomy (Cardiomegaly, then Emphysema) to ``geo`` in place."""
    for name, change in ANATOMY_CHANGES.items():
        idx = np.flatnonzero(labels[:, classes.index(name)])
        if len(idx):
            change(rng, geo, idx, PATTERNS[name])
