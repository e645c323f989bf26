"""Image transforms shared by training, evaluation and inference."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, Transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChestXrayToTensor(Transform):
    """Turns a loaded chest X-ray of any common kind into the network's input.

    Input: a channel-first image (1, H, W) grey, (3, H, W) RGB or (4, H, W) RGBA, with the
    intensity range of its file type (8-bit: 0-255, 16-bit: 0-65535, float: taken as 0-1 when its
    maximum is <= 1, else scaled by its maximum). Output: a float32 (3, size, size) tensor, the
    grey image repeated over 3 channels and normalised with the ImageNet mean and std (the
    statistics of the pretrained weights the paper starts from).

    Args:
        size: output height and width (bilinear resize, antialiased when shrinking).
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, img):
        meta = img.meta if isinstance(img, MetaTensor) else None
        x = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img.as_tensor() if isinstance(img, MetaTensor) else img)
        if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
            raise ValueError(f"expected a channel-first grey, RGB or RGBA image, got shape {tuple(x.shape)}")
        scale = _intensity_max(x)
        x = x.float() / scale
        if x.shape[0] >= 3:
            x = x[:3].mean(dim=0, keepdim=True)  # RGB(A) chest X-rays are grey images stored in colour
        if tuple(x.shape[1:]) != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)[0]
        x = (x.clamp(0, 1).expand(3, -1, -1) - self.mean) / self.std
        return MetaTensor(x, meta=meta) if meta is not None else x


def _intensity_max(x: torch.Tensor) -> float:
    if x.dtype == torch.uint8:
        return 255.0
    if x.dtype in (torch.int16, torch.int32, torch.uint16, torch.int64):
        return 65535.0 if float(x.max()) > 255 else 255.0
    peak = float(x.max()) if x.numel() else 1.0
    if peak <= 1.0:
        return 1.0
    return 65535.0 if peak > 255 else 255.0


class ChestXrayToTensord(MapTransform):
    """Dictionary version of :class:`ChestXrayToTensor`."""

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.converter = ChestXrayToTensor(size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ImageReadError(RuntimeError):
    """An image file that cannot be read (missing, truncated, corrupt, unknown format); names the file."""


class LoadChestXrayd(LoadImaged):
    """MONAI's ``LoadImaged`` whose read errors name the file.

    MONAI reports a failing transform as ``applying transform <LoadImaged>`` and leaves the file
    name to its debug log; with this class the error (in the exception chain) is
    ``cannot read image /path/x.png: <reason>``. Takes the same arguments as ``LoadImaged``.
    """

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as e:
            paths = [str(data[k]) for k in self.key_iterator(dict(data))]
            raise ImageReadError(f"cannot read image {', '.join(paths)}: {type(e).__name__}: {e}") from e


def check_image(path) -> str | None:
    """Fully decode an image file with Pillow; ``None`` when it is readable, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except FileNotFoundError:
        return "file not found"
    except Exception as e:  # truncated, corrupt or not an image
        return f"{type(e).__name__}: {e}"
    return None
