"""Inpainting masks: which pixels to generate and which to keep.

Convention (diffusers', LaMa's and most painting tools'): white / 1 / True marks the pixels to
INPAINT, black / 0 / False the pixels to keep from the input. RePaint's own masks are the other
way round ("keep" masks): pass invert=True (`--invert-mask`) for those.

A mask is a PNG (grey; an RGB or RGBA PNG whose colour channels are equal), a folder of PNGs
(one per image), a .npy / .npz array, or an array (bool, or numbers that are all 0 or 1;
0 / 255 for uint8). One mask applies to every image; N masks pair with N images.

A mask must be binary. A grey mask (antialiased edges, a JPEG) is refused, with the number of
grey pixels, unless a threshold is given: then pixels >= threshold are inpainted (threshold in
the mask's own units, 0..255 for images) and the caller is told how many pixels that made.
"""
import pathlib

import numpy as np
import torch

from .inputs import InputError, _read_npz, _read_picture, _SUFFIXES

__all__ = ["Mask", "read_mask"]


class Mask:
    """inpaint: bool tensor [N or 1, 1, H, W], True where pixels are generated."""

    def __init__(self, inpaint, note=None):
        self.inpaint = inpaint
        self.note = note  # how it was thresholded, for the user

    @property
    def keep(self):
        return ~self.inpaint

    def for_images(self, index):
        """The masks of images `index` (a list of image positions)."""
        if self.inpaint.shape[0] == 1:
            return self.inpaint.expand(len(index), -1, -1, -1)
        return self.inpaint[torch.as_tensor(index, dtype=torch.long)]

    def fraction(self):
        return float(self.inpaint.float().mean())


def _array_from_path(path, option):
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES)
        if not files:
            raise InputError(f"{option} {path}: the folder holds no images")
        arrays = [_grey(_read_picture(p, option), f"{option} {p}") for p in files]
        if len({a.shape for a in arrays}) > 1:
            raise InputError(f"{option} {path}: the masks differ in size")
        return np.stack(arrays), True
    if not path.exists():
        raise InputError(f"{option} {path} does not exist")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, option)[0], False
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False), False
        except (OSError, ValueError) as e:
            raise InputError(f"{option} {path}: cannot read it as an .npy ({e})") from None
    return _grey(_read_picture(path, option), f"{option} {path}")[None], True


def _grey(hwc, where):
    """One channel of an HWC picture whose colour channels agree (alpha is ignored)."""
    colour = hwc[..., :3] if hwc.shape[-1] >= 3 else hwc[..., :1]
    if colour.shape[-1] == 3 and not ((colour[..., 0] == colour[..., 1]).all()
                                      and (colour[..., 1] == colour[..., 2]).all()):
        raise InputError(f"{where}: a mask must be grey (black = keep, white = inpaint); this "
                         "image has colours")
    return colour[..., 0]


def _as_nhw(array, option):
    """An array of masks -> [N, H, W] (a trailing or second axis of size 1 is dropped)."""
    a = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"{option}: a mask array must be HW, NHW, NHW1 or N1HW, got shape "
                         f"{list(a.shape)}")
    return a


def _binarize(a, option, threshold, image_units):
    """bool [N, H, W] (True = inpaint), and a note when a threshold was applied."""
    if a.dtype == np.bool_:
        return a, None
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{option}: a mask must be numbers or booleans, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{option}: the mask holds NaN or inf")
    high = 255.0 if image_units else 1.0
    if threshold is None:
        grey = ~np.isin(a, (0.0, high))
        if grey.any():
            lo, hi = a[grey].min(), a[grey].max()
            unit = "0..255" if image_units else "0..1"
            raise InputError(
                f"{option} is not binary: {int(grey.sum())} of {a.size} pixels are neither 0 "
                f"nor {high:g} (values {lo:g}..{hi:g}); pass a threshold (--mask-threshold T, "
                f"in {unit}) to inpaint the pixels >= T, e.g. {high / 2:g}")
        return a == high, None
    inpaint = a >= threshold
    note = (f"{option} thresholded at {threshold:g} (pixels >= {threshold:g} are inpainted): "
            f"{int(inpaint.sum())} of {a.size} pixels to inpaint")
    return inpaint, note


def read_mask(source, size, count=None, threshold=None, invert=False, option="--mask"):
    """A Mask for images of size x size (count images, when known) from any source above."""
    image_units = False
    if isinstance(source, (str, pathlib.Path)):
        option = f"{option} {source}"
        array, image_units = _array_from_path(source, option)
        image_units = image_units or np.asarray(array).dtype == np.uint8
    else:
        array = source
        image_units = np.asarray(array).dtype == np.uint8 if not torch.is_tensor(array) else (
            array.dtype == torch.uint8)
    a = _as_nhw(array, option)
    if a.shape[1:] != (size, size):
        raise InputError(f"{option}: the mask is {a.shape[2]}x{a.shape[1]} but the images are "
                         f"{size}x{size}")
    if count is not None and a.shape[0] not in (1, count):
        raise InputError(f"{option}: {a.shape[0]} masks for {count} images; give one mask for "
                         "all of them or one per image")
    inpaint, note = _binarize(a, option, threshold, image_units)
    if invert:
        inpaint = ~inpaint
    return Mask(torch.from_numpy(np.ascontiguousarray(inpaint))[:, None], note)
