"""Images to edit, read from what a user has and checked against the model before any work.

    a PNG (or JPEG / WebP / BMP) file      one image
    a folder                               every image file in it, in name order
    guided-diffusion's .npz                arr_0 uint8 NHWC images, arr_1 labels (optional)
    a .npy file                            uint8 NHWC / HWC / HW
    an array                               uint8 numpy NHWC / HWC / HW, a float tensor NCHW /
                                           CHW in [-1, 1], a PIL image or a list of them

Images are never resized or converted between grey and colour: a wrong size or number of
channels is an error that names the argument and says what the model takes.
"""
import pathlib

import numpy as np
import torch

from ..train.data import IMAGE_SUFFIXES, uint8_to_float

__all__ = ["InputError", "read_images", "check_images", "read_labels", "PNG_CHANNELS"]

# PIL mode -> channels; palette and CMYK images are read as RGB.
PNG_CHANNELS = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3, "CMYK": 3, "YCbCr": 3}
_SUFFIXES = IMAGE_SUFFIXES + (".bmp",)


class InputError(ValueError):
    """A bad image, mask or label input; the message names the argument."""


def _pil_array(im, where):
    """A PIL image -> uint8 HWC (palette, bilevel and CMYK images converted losslessly)."""
    if im.mode not in PNG_CHANNELS:
        raise InputError(f"{where}: PIL mode {im.mode} (16-bit or float images) is not "
                         "supported; save it as an 8-bit grey or RGB PNG")
    if im.mode in ("1", "P", "CMYK", "YCbCr"):
        im = im.convert("L" if im.mode == "1" else "RGB")
    array = np.array(im, dtype=np.uint8)  # a writable copy
    return array[..., None] if array.ndim == 2 else array


def _read_picture(path, option):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return _pil_array(im, f"{option} {path}")
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{option} {path}: cannot read it as an image ({e})") from None


def _read_npz(path, option):
    try:
        f = np.load(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{option} {path}: cannot read it as an .npz ({e})") from None
    with f:
        if "arr_0" not in f.files:
            raise InputError(f"{option} {path} has no arr_0 (guided-diffusion's images, uint8 "
                             f"NHWC); it holds {sorted(f.files) or 'nothing'}")
        images = f["arr_0"]
        labels = f["arr_1"] if "arr_1" in f.files else None
    return images, labels


def _from_path(path, option):
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES)
        if not files:
            raise InputError(f"{option} {path}: the folder holds no images "
                             f"({', '.join(_SUFFIXES)})")
        pictures = [_read_picture(p, option) for p in files]
        for name, picture in zip(files, pictures):
            if picture.shape != pictures[0].shape:
                raise InputError(f"{option} {path}: the images differ in size or channels "
                                 f"({files[0].name} is {_describe(pictures[0].shape)}, "
                                 f"{name.name} {_describe(picture.shape)})")
        return np.stack(pictures), None
    if not path.exists():
        raise InputError(f"{option} {path} does not exist")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, option)
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as e:
            raise InputError(f"{option} {path}: cannot read it as an .npy ({e})") from None
    return _read_picture(path, option)[None], None


def _describe(hwc):
    h, w, c = hwc
    return f"{w}x{h} with {c} channel{'s' if c != 1 else ''}"


def _uint8_nhwc(array, option):
    """A uint8 array of 2-4 dims -> NHWC."""
    if array.dtype != np.uint8:
        raise InputError(f"{option}: images as arrays must be uint8 (0..255) NHWC, or a float "
                         f"tensor NCHW in [-1, 1]; got a {array.dtype} array of shape "
                         f"{list(array.shape)}")
    if array.ndim == 2:
        array = array[None, ..., None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise InputError(f"{option}: expected uint8 images of shape NHWC, HWC or HW, got "
                         f"{list(array.shape)}")
    return array


def _from_tensor(x, option):
    """A float tensor NCHW / CHW in [-1, 1]."""
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"{option}: a tensor must be float NCHW (or CHW) in [-1, 1], got "
                         f"{x.dtype} of shape {list(x.shape)}")
    x = x.detach().cpu().float()
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{option}: the images hold NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-3 or hi > 1 + 1e-3:
        raise InputError(f"{option}: float images must lie in [-1, 1], got values in "
                         f"[{lo:.3g}, {hi:.3g}] (pass uint8 arrays for 0..255 images)")
    return x.clamp(-1, 1)


def read_images(source, option="--image"):
    """(float images NCHW in [-1, 1], labels (int64 array) or None) from any source above."""
    if isinstance(source, (str, pathlib.Path)):
        images, labels = _from_path(source, option)
        return uint8_to_float(_uint8_nhwc(images, f"{option} {source}")), read_labels(
            labels, len(images), f"{option} {source}")
    if torch.is_tensor(source):
        if source.dtype == torch.uint8:
            return uint8_to_float(_uint8_nhwc(source.numpy(), option)), None
        return _from_tensor(source, option), None
    if hasattr(source, "mode") and hasattr(source, "size"):  # a PIL image
        source = [source]
    if isinstance(source, (list, tuple)) and source and hasattr(source[0], "mode"):
        arrays = [_pil_array(im, option) for im in source]
        if len({a.shape for a in arrays}) > 1:
            raise InputError(f"{option}: the PIL images differ in size or mode")
        return uint8_to_float(np.stack(arrays)), None
    return uint8_to_float(_uint8_nhwc(np.asarray(source), option)), None


def read_labels(labels, count, option):
    """arr_1 of an npz: one integer label per image, or None."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != count or not np.issubdtype(labels.dtype,
                                                                         np.integer):
        raise InputError(f"{option}: arr_1 must hold one integer label per image ({count}), got "
                         f"{labels.dtype} of shape {list(labels.shape)}")
    return labels.astype(np.int64)


def check_images(x, channels, size, option="--image", what="the model"):
    """Images NCHW must be size x size with the model's channels."""
    n, c, h, w = x.shape
    if (h, w) != (size, size):
        raise InputError(f"{option}: the images are {w}x{h} but {what} takes {size}x{size} "
                         "(fastguide does not resize inputs; resize or crop them first)")
    if c != channels:
        names = {1: "grey", 3: "RGB", 4: "RGBA", 2: "grey + alpha"}
        raise InputError(f"{option}: the images have {c} channel{'s' if c != 1 else ''} "
                         f"({names.get(c, '?')}) but {what} takes {channels} "
                         f"({names.get(channels, '?')}); convert them first")
    return x
