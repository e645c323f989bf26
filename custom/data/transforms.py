"""Image transforms shared by training, evaluation and inference."""

from __future__ import annotations

import os
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, RandomizableTransform, Transform

from .store import STORE_SIZE_KEY, StoreError, is_store_ref, read_store_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChestXrayToTensor(Transform):
    """Turns a loaded chest X-ray of any common kind into the network's input.

    Input: a channel-first image (1, H, W) grey, (2, H, W) grey + alpha, (3, H, W) RGB or
    (4, H, W) RGBA (alpha ignored; colour channels averaged), as read by MONAI's ``PILReader`` with
    ``dtype=None``. Intensities are scaled to 0-1 by the range of the stored data:

    * 8-bit (NIH and OpenI PNG, CheXpert JPEG; ``uint8``): / 255;
    * more than 8 bits (16-bit PNG such as PadChest; read as ``uint16``/``int32``): / (2^b - 1),
      b the smallest of 8, 10, 12, 14, 16 bits that holds the image's maximum. Medical images keep
      their detector's bit depth inside a 16-bit container (PadChest: 10 and 12 bits stored);
      dividing a 12-bit image by 65535 would squeeze it into the bottom 1/16 of the range;
    * float: taken as 0-1 when its maximum is <= 1, else scaled like integers.

    Output: a float32 (3, size, size) tensor, the grey image repeated over 3 channels and
    normalised with the ImageNet mean and std (the statistics of the pretrained weights the
    paper starts from).

    Args:
        size: output height and width (bilinear resize, antialiased when shrinking).
        normalise: false to stop before the last two steps: the grey (1, size, size) image in 8 bits
            (``uint8`` 0-255, the 0-1 image rounded to the nearest grey level, as the prepared store keeps
            it), which is turned into the network's input later: the random crop and flip then work on one
            8-bit channel instead of three float ones (bilinear resampling and flips commute with the
            per-channel normalisation), collation moves a twelfth of the bytes, and
            :class:`NormaliseChestXrayBatch` finishes it on the device. An 8-bit grey image already at
            ``size`` (a store's image) passes through untouched.
    """

    def __init__(self, size: int, normalise: bool = True):
        from ..flags import as_bool, check_settings

        check_settings({"image_size": size})  # the config's image_size: a bad one is named before any image
        self.size = int(size)
        self.normalise = as_bool(normalise, "normalise")
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def _tensor(self, img) -> torch.Tensor:
        """The image's pixels as a plain tensor; a store's image prepared at another size is refused."""
        meta = img.meta if isinstance(img, MetaTensor) else None
        stored = (meta or {}).get(STORE_SIZE_KEY)
        if stored is not None and int(stored) != self.size:
            raise StoreError(f"{meta.get('filename_or_obj')} comes from a store prepared at {int(stored)} pixels, "
                             f"but image_size is {self.size}: prepare a store at {self.size} or train with "
                             f"--image_size {int(stored)}")
        if isinstance(img, MetaTensor):
            return img.as_tensor()
        return img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))

    def grey8(self, img) -> torch.Tensor:
        """:meth:`grey` rounded to 8 bits: a (1, size, size) ``uint8`` tensor (what the prepared store keeps:
        :mod:`custom.data.store`). An 8-bit grey image already at ``size`` is returned as it is."""
        x = self._tensor(img)
        if x.dtype == torch.uint8 and tuple(x.shape) == (1, self.size, self.size):
            return x
        return (self.grey(x) * 255).round_().to(torch.uint8)

    def grey(self, img) -> torch.Tensor:
        """The grey image scaled to 0-1 and resized: a (1, size, size) float32 tensor, before normalisation."""
        x = self._tensor(img)
        if x.ndim != 3 or x.shape[0] not in (1, 2, 3, 4):
            raise ValueError("expected a channel-first grey, grey+alpha, RGB or RGBA image, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[0] == 2:
            x = x[:1]  # grey + alpha
        elif x.shape[0] >= 3:
            x = x[:3]  # RGB(A) chest X-rays are grey images stored in colour: average R, G, B below
        scale = _intensity_max(x)
        x = x.float() / scale
        if x.shape[0] == 3:
            x = x.mean(dim=0, keepdim=True)
        if tuple(x.shape[1:]) != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        return x.clamp(0, 1)

    def __call__(self, img):
        meta = img.meta if isinstance(img, MetaTensor) else None
        if not self.normalise:
            x = self.grey8(img)
        else:
            x = (self.grey(img).expand(3, -1, -1) - self.mean) / self.std
        return MetaTensor(x, meta=meta) if meta is not None else x


#: bit depths a medical image is stored with inside a 16-bit container.
_BIT_DEPTHS = (8, 10, 12, 14, 16)


def _intensity_max(x: torch.Tensor) -> float:
    """The value that maps to 1: 255 for 8-bit data, 2^b - 1 for deeper data (see ChestXrayToTensor)."""
    if x.dtype == torch.bool:
        return 1.0
    if x.dtype in (torch.uint8, torch.int8):
        return 255.0
    peak = float(x.max()) if x.numel() else 0.0
    if x.is_floating_point() and peak <= 1.0:
        return 1.0
    for bits in _BIT_DEPTHS:
        if peak <= 2**bits - 1:
            return float(2**bits - 1)
    return peak


class ChestXrayToTensord(MapTransform):
    """Dictionary version of :class:`ChestXrayToTensor`."""

    def __init__(self, keys: KeysCollection, size: int, normalise: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.converter = ChestXrayToTensor(size, normalise)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class NormaliseChestXrayBatch:
    """A trainer's ``prepare_batch`` that finishes :class:`ChestXrayToTensor` on the device: a batch of
    (B, 1, H, W) 8-bit grey images (``ChestXrayToTensord`` with ``normalise: false``, then cropped and flipped;
    ``uint8``, or float 0-1) -> the (B, 3, H, W) float32 network input, scaled to 0-1, repeated over 3 channels
    and normalised with the ImageNet mean and std.

    The NIH overlay's training chain uses it: the data-loader workers then crop, flip and collate one 8-bit
    channel instead of three float ones (a twelfth of the bytes per image), and the GPU does the rest.
    Bilinear resampling and flips commute with the per-channel normalisation, so the network gets the same
    tensor within a grey level (the crop's 8-bit rounding). Returns ``(image, label)`` as MONAI's
    ``default_prepare_batch`` does.
    """

    def __init__(self):
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"NormaliseChestXrayBatch expects (B, 1, H, W) grey images (ChestXrayToTensord with "
                             f"normalise: false), got shape {tuple(image.shape)}")
        image = image.to(device=device, non_blocking=non_blocking, **kwargs)
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        mean, std = self.mean.to(image.device), self.std.to(image.device)
        label = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking, **kwargs)
        return (image.expand(-1, 3, -1, -1) - mean) / std, label


class RandResizedCropd(RandomizableTransform, MapTransform):
    """Random resized crop of a (C, H, W) image, resized back to (H, W): the paper's
    ``RandomResizedCrop`` augmentation.

    A crop covering a random fraction ``scale`` of the image area, with a random aspect ratio
    (log-uniform in ``ratio``), at a random position, is resized (bilinear) to the input size.
    When 10 draws give no crop that fits, the largest centred crop whose aspect ratio is within
    ``ratio`` is used. An 8-bit (``uint8``) image is resampled in 8 bits (torch's integer path, within one
    grey level of the float one) and stays 8-bit; any other becomes float32.

    Args:
        keys: keys of the images (cropped identically when several).
        scale: range of the crop's share of the image area (the authors' code: 0.2 to 1).
        ratio: range of the crop's width / height.
        prob: probability of cropping an image at all.
    """

    def __init__(self, keys: KeysCollection, scale: Sequence[float] = (0.2, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), prob: float = 1.0, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self._box = None

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Draw a crop ``(top, left, h, w)`` for an image of ``height`` x ``width``."""
        area = height * width
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = float(np.exp(self.R.uniform(*log_ratio)))
            w = int(round(np.sqrt(target * aspect)))
            h = int(round(np.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        box = None
        for key in self.key_iterator(d):
            img = d[key]
            meta = img.meta if isinstance(img, MetaTensor) else None
            x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            height, width = x.shape[-2:]
            box = box or self.crop_box(height, width)
            top, left, h, w = box
            crop = x[..., top : top + h, left : left + w]
            crop = crop if crop.dtype == torch.uint8 else crop.float()  # 8-bit images stay 8-bit (torch resamples them)
            out = F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False,
                                antialias=h > height or w > width)[0]
            d[key] = MetaTensor(out, meta=meta) if meta is not None else out
        return d
class ImageReadError(RuntimeError):
    """An image file that cannot be read (missing, truncated, corrupt, too large, unknown format).

    The message is ``cannot read image <path>: <reason>``; ``path`` and ``reason`` are kept as attributes.
    """

    def __init__(self, path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = str(path), reason


class LoadImageChestXrayd(LoadImaged):
    """MONAI's ``LoadImaged`` whose read errors name the file and give Pillow's reason, and which reads a
    prepared store's references ``<folder>/images.npy#<row>`` from its memory map (:mod:`custom.data.store`).

    (Its name keeps ``LoadImage`` in it: MONAI Deploy's bundle operator drops the transforms whose
    class name contains ``LoadImage`` from the preprocessing it runs on images it has loaded itself.)

    MONAI reports a failing transform as ``applying transform <LoadImaged>``, leaves the file name to
    its debug log, and reports a file its reader cannot open as "cannot find a suitable reader" with
    advice to install reader libraries; with this class the error (in the exception chain) is
    :class:`ImageReadError`, ``cannot read image /path/x.png: <reason>``, the reason being what
    Pillow says about the file (:func:`check_image`: not found, truncated, not an image, too large to
    decode safely, ...). Takes the same arguments as ``LoadImaged``.
    """

    def __call__(self, data, reader=None):
        d = dict(data)
        refs = [k for k in self.key_iterator(d) if is_store_ref(d[k])]
        if refs:  # a prepared store (custom.data.store): the 8-bit grey image, already at the training size
            for key in refs:
                image = read_store_image(d[key])
                d[key] = MetaTensor(torch.from_numpy(image)[None], meta={"filename_or_obj": str(d[key]),
                                                                        STORE_SIZE_KEY: image.shape[-1]})
            return d
        try:
            return super().__call__(data, reader)
        except Exception as e:
            paths = [str(data[k]) for k in self.key_iterator(dict(data))]
            reasons = [check_image(p) for p in paths]
            reason = "; ".join(r for r in reasons if r) or _first_line(e)
            raise ImageReadError(", ".join(paths), reason) from e


def _first_line(exc: BaseException) -> str:
    """The innermost exception of a chain, as ``Type: first line of its message``."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_image(path) -> str | None:
    """Fully decode an image file with Pillow (DICOM: pydicom); ``None`` when it is readable, else the reason."""
    return inspect_image(path)[0]


#: an image is degenerate when a side is under ``image_size / DEGENERATE_SIZE_FACTOR`` (or it is constant).
DEGENERATE_SIZE_FACTOR = 4


def degenerate_reason(width: int, height: int, low, high, image_size: int | None = None) -> str | None:
    """Why a readable image is degenerate, ``None`` when it is not.

    Degenerate: a side shorter than ``image_size / 4`` (:data:`DEGENERATE_SIZE_FACTOR`; a 512-pixel network
    input blown up from fewer than 128 pixels; not checked without ``image_size``), or a constant image
    (maximum == minimum over the colour channels: all black, all white, one grey).
    """
    reasons = []
    if image_size:
        floor = image_size / DEGENERATE_SIZE_FACTOR
        if width < floor or height < floor:
            reasons.append(f"{width} x {height} pixels, a side under 1/{DEGENERATE_SIZE_FACTOR} of the network's "
                           f"{image_size} x {image_size} input")
    if low == high:
        value = int(low) if float(low).is_integer() else float(low)
        reasons.append(f"constant image, every pixel {value}")
    return "; ".join(reasons) or None


def _colour_extrema(im) -> tuple:
    """(min, max) of a Pillow image over its colour bands (alpha left out)."""
    extrema = im.getextrema()
    if not isinstance(extrema[0], tuple):  # one band
        return extrema
    bands = list(extrema[:-1] if im.mode.endswith("A") or im.mode == "PA" else extrema)
    return min(b[0] for b in bands), max(b[1] for b in bands)


def inspect_image(path, image_size: int | None = None) -> tuple[str | None, str | None]:
    """Fully decode an image file once with Pillow (DICOM: pydicom).

    Returns:
        ``(unreadable, degenerate)``: why the file cannot be read (``None`` when it can), and why the
        readable image is degenerate (:func:`degenerate_reason`; ``None`` when it is not, or unreadable).
    """
    from PIL import Image, UnidentifiedImageError

    from .dicom import DICOM_SUFFIXES, DicomReadError, is_dicom, read_dicom

    if str(path).lower().endswith(DICOM_SUFFIXES) and os.path.isfile(path) and not is_dicom(path):
        return (f"not a DICOM file (named {os.path.splitext(str(path))[1]} but without the DICOM marker 'DICM' "
                "at byte 128)"), None
    if is_dicom(path):
        try:
            array, _ = read_dicom(path)
        except DicomReadError as e:  # "<path>: <reason>": the caller names the file
            return str(e).removeprefix(f"{path}: "), None
        except Exception as e:  # anything else pydicom raises on bad data
            return f"{type(e).__name__}: {e}", None
        height, width = array.shape[-2:]
        return None, degenerate_reason(width, height, array.min(), array.max(), image_size)

    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image", None
            low, high = _colour_extrema(im)
            return None, degenerate_reason(im.width, im.height, low, high, image_size)
    except FileNotFoundError:
        return "file not found", None
    except IsADirectoryError:
        return "a folder, not an image file", None
    except Image.DecompressionBombError as e:
        return f"too large to decode safely (Pillow refuses a possible decompression bomb): {e}", None
    except UnidentifiedImageError:
        return "not an image file Pillow can read (expected PNG or JPEG)", None
    except OSError as e:  # truncated or corrupt data
        return f"corrupt or truncated image data ({e})", None
    except Exception as e:  # anything else Pillow raises on bad data
        return f"{type(e).__name__}: {e}", None


def inspect_images(paths, image_size: int | None = None) -> list[tuple[str | None, str | None]]:
    """:func:`inspect_image` of every path, in threads (a progress bar from 2,000 images on), in order."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        return list(tqdm(pool.map(lambda path: inspect_image(path, image_size), paths), total=len(paths),
                         desc="checking images", unit="img", disable=len(paths) < 2000, mininterval=2))


def degenerate_tensor_reason(img, image_size: int | None = None) -> str | None:
    """:func:`degenerate_reason` of a loaded channel-first image (``(C, H, W)``, as ``LoadImaged`` gives it)."""
    x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
    if x.ndim != 3 or x.numel() == 0:
        return None
    colour = x[:1] if x.shape[0] == 2 else x[:3]  # alpha left out
    height, width = x.shape[-2:]
    return degenerate_reason(int(width), int(height), colour.min().item(), colour.max().item(), image_size)
