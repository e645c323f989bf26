"""The distance model of the out-of-distribution gate (:mod:`.ood`): how far an image is from the training images.

Two views of an image are measured, each as a Mahalanobis distance to the training images (mean and
scikit-learn's Ledoit-Wolf shrunk covariance):

- ``network``: the classifier's own pooled features (the input of its last linear layer), as FRODO (Çallı et
  al., MIDL 2019) does. They are as good as the network: a model trained briefly on a few hundred images has
  features that do not tell a CT slice from a chest X-ray (bundle/docs/ood.md).
- ``image``: :func:`image_statistics` of the network input, which need no training: the 8 x 8 layout of the
  grey levels, the same layout with each image's own mean and spread taken out, the 4 x 4 layout of the edge
  strength, and 17 quantiles of the grey levels. A frontal chest X-ray has a layout no photo, slide, CT or MR
  slice shares. They are standardised (by the training images' spread) before the covariance is shrunk.

Each view's distance is divided by its own threshold; the gate's distance is the larger of the two ratios,
with a threshold of its own (a little above 1). Every threshold is :func:`conformal_threshold` of the validation
images' distances, which accepts ``share`` of new images like them. So an image is refused when it is unlike
the training images in either view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: the share of the validation images the threshold accepts, by default.
DEFAULT_SHARE = 0.99
#: the start of every refusal reason.
REFUSAL = "not like the training images"
#: the version of the gate file (``model.ood.npz``); a file of another version is refused with "refit it".
FORMAT = 2
#: the views of an image the gate measures, in the order their features are concatenated.
VIEWS = ("network", "image")
#: the side of the grey-level layouts of :func:`image_statistics`, the side of its edge layout, and its quantiles.
LAYOUT, EDGE_LAYOUT, QUANTILES = 8, 4, tuple(np.linspace(0.02, 0.98, 17).round(2))
#: the number of image statistics (:func:`image_statistics`).
NUM_IMAGE_STATISTICS = 2 * LAYOUT**2 + EDGE_LAYOUT**2 + len(QUANTILES)


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """(N, :data:`NUM_IMAGE_STATISTICS`) float32 statistics of network inputs ``(N, C, H, W)`` (normalised as
    :class:`~custom.data.transforms.ChestXrayToTensord` does): of the first channel's [0, 1] grey levels, averaged
    down to at most 64 x 64, the 8 x 8 layout, the same layout less its mean and over its standard deviation, the
    4 x 4 layout of the edge strength (at 32 x 32) and 17 quantiles (2% to 98%)."""
    from torch.nn.functional import adaptive_avg_pool2d

    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = images[:, :1].detach().float().cpu() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    if max(x.shape[-2:]) > 64:
        x = adaptive_avg_pool2d(x, (min(x.shape[-2], 64), min(x.shape[-1], 64)))
    layout = adaptive_avg_pool2d(x, LAYOUT).flatten(1)
    spread = layout.std(dim=1, keepdim=True) + 1e-3
    small = adaptive_avg_pool2d(x, 32)
    dx = torch.nn.functional.pad(small[..., 1:] - small[..., :-1], (0, 1))
    dy = torch.nn.functional.pad(small[..., 1:, :] - small[..., :-1, :], (0, 0, 0, 1))
    edges = adaptive_avg_pool2d((dx**2 + dy**2).sqrt(), EDGE_LAYOUT).flatten(1)
    quantiles = torch.quantile(x.flatten(1), torch.tensor(QUANTILES, dtype=torch.float32), dim=1).T
    return torch.cat([layout, (layout - layout.mean(dim=1, keepdim=True)) / spread, edges, quantiles], dim=1)


class Mahalanobis:
    """One view's distance: ``sqrt((z - mean)^T precision (z - mean))`` of the features ``z = x / scale``, and its
    threshold (the distance that the gate counts as 1).

    Args:
        mean, precision: (D,) mean and (D, D) inverse shrunk covariance of the scaled training features.
        scale: (D,) divisors of the features (ones: none).
        threshold: the distance of this view that the gate's distance counts as 1.
    """

    def __init__(self, mean, precision, scale=None, threshold: float = 1.0):
        # float32, as stored: the distance is one (N, D) x (D, D) product per batch, half the time of float64
        self.mean = np.asarray(mean, dtype=np.float32)
        self.precision = np.asarray(precision, dtype=np.float32)
        self.scale = np.ones_like(self.mean) if scale is None else np.asarray(scale, dtype=np.float32)
        self.threshold = float(threshold)

    @classmethod
    def fit(cls, features, standardise: bool) -> "Mahalanobis":
        from sklearn.covariance import LedoitWolf

        x = np.asarray(features, dtype=np.float64)
        scale = x.std(axis=0) + 1e-6 if standardise else np.ones(x.shape[1])
        lw = LedoitWolf().fit(x / scale)
        return cls(lw.location_, lw.precision_, scale)

    def distance(self, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32) / self.scale - self.mean
        return np.sqrt(np.maximum(((x @ self.precision) * x).sum(axis=1, dtype=np.float64), 0.0))


class FeatureDistance:
    """A fitted gate: the distance of :data:`VIEWS` and its threshold (see the module docstring).

    Args:
        views: one :class:`Mahalanobis` per view, in the order of the features' columns.
        threshold: the largest accepted distance.
        share: the share of the validation images the threshold accepts.
        num_fit, num_threshold: the numbers of training and validation images used.
    """

    def __init__(self, views: list[Mahalanobis], threshold: float, share: float = DEFAULT_SHARE, num_fit: int = 0,
                 num_threshold: int = 0):
        self.views = list(views)
        self.threshold, self.share = float(threshold), float(share)
        self.num_fit, self.num_threshold = int(num_fit), int(num_threshold)

    @property
    def num_features(self) -> int:
        return sum(len(v.mean) for v in self.views)

    def view_distances(self, features) -> np.ndarray:
        """(N, views) distances of (N, D) features, each over its view's threshold."""
        x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        if x.shape[1] != self.num_features:
            raise ValueError(f"the gate was fitted on {self.num_features} features, the network gives {x.shape[1]}: "
                             "refit it for this model (python -m custom.cli fit_ood)")
        out, start = [], 0
        for view in self.views:
            out.append(view.distance(x[:, start : start + len(view.mean)]) / view.threshold)
            start += len(view.mean)
        return np.stack(out, axis=1) if out else np.zeros((len(x), 0))

    def distance(self, features) -> np.ndarray:
        """(N,) distances of (N, D) features: the largest of the views' distances over their thresholds."""
        return self.view_distances(features).max(axis=1)

    def reason(self, distance: float) -> str:
        """Why an image at ``distance`` is refused ("" when it is accepted)."""
        if distance <= self.threshold:
            return ""
        return f"{REFUSAL}: distance {distance:.2f} > {self.threshold:.2f}"

    def reasons(self, features) -> list[str]:
        """The refusal reason of every image ("" for the accepted ones)."""
        return [self.reason(d) for d in self.distance(features)]

    def save(self, path) -> Path:
        """Write the gate as ``.npz`` (atomically)."""
        from ..files import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for i, view in enumerate(self.views):
            arrays.update({f"mean_{i}": view.mean, f"precision_{i}": view.precision, f"scale_{i}": view.scale,
                           f"threshold_{i}": view.threshold})
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, format=FORMAT, num_views=len(self.views), threshold=self.threshold, share=self.share,
                     num_fit=self.num_fit, num_threshold=self.num_threshold, **arrays)
        return path

    @classmethod
    def load(cls, path) -> "FeatureDistance":
        """Read a gate written by :meth:`save`; ValueError naming the file when it is not one (or of another
        version)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z or int(z["format"]) != FORMAT:
                    raise ValueError(f"a gate file of another version (this code reads version {FORMAT})")
                views = [Mahalanobis(z[f"mean_{i}"], z[f"precision_{i}"], z[f"scale_{i}"], float(z[f"threshold_{i}"]))
                         for i in range(int(z["num_views"]))]
                return cls(views, float(z["threshold"]), float(z["share"]), int(z["num_fit"]),
                           int(z["num_threshold"]))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a gate file written by custom.evaluation.ood ({e}); refit it with "
                             "python -m custom.cli fit_ood") from None


def conformal_threshold(distances, share: float) -> float:
    """The threshold that accepts at least ``share`` of new images like the given ones, in expectation: the
    ``ceil((n + 1) * share)``-th smallest of the ``n`` distances (split-conformal prediction's finite-sample
    quantile; the largest when ``n`` is too small for ``share``). With 1000 validation images and 99% it is the
    991st; with 120 it is the largest (a plain 99% quantile would lie between the two largest and accept about
    98% of new images)."""
    d = np.sort(np.asarray(distances, dtype=np.float64))
    k = int(np.ceil((len(d) + 1) * float(share)))
    return float(d[min(k, len(d)) - 1])


def fit_gate(training_features, validation_features, share: float = DEFAULT_SHARE,
             view_sizes: tuple[int, ...] | None = None) -> FeatureDistance:
    """The gate of training features with the threshold accepting ``share`` of the validation features.

    Args:
        training_features, validation_features: (N, D) features (:func:`custom.evaluation.ood.logits_and_features`).
        share: the share of the validation images each view's threshold, and the gate's, accepts.
        view_sizes: the number of columns of each view, in order; default: all the columns are one view, not
            standardised. With two or more, the views after the first (the image statistics) are standardised.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    train = np.asarray(training_features, dtype=np.float64)
    held = np.asarray(validation_features, dtype=np.float64)
    if len(train) < 2 or len(held) < 1:
        raise ValueError(f"the gate needs at least 2 training and 1 validation image, got {len(train)} and "
                         f"{len(held)}")
    sizes = tuple(view_sizes) if view_sizes else (train.shape[1],)
    if sum(sizes) != train.shape[1]:
        raise ValueError(f"views of {sizes} columns, features of {train.shape[1]}")
    views, start = [], 0
    for i, size in enumerate(sizes):
        view = Mahalanobis.fit(train[:, start : start + size], standardise=i > 0)
        view.threshold = max(conformal_threshold(view.distance(held[:, start : start + size]), share), 1e-12)
        views.append(view)
        start += size
    gate = FeatureDistance(views, 0.0, share, len(train), len(held))
    gate.threshold = conformal_threshold(gate.distance(held), share)
    return gate
