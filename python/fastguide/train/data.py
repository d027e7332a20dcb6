"""Training data sets, all as images in [-1, 1] (NCHW float32) plus integer class labels.

    digits       sklearn's load_digits: 1797 8x8 grey images of 0-9 (17 grey levels, 0..16),
                 kept at their native 8x8 (upsampling adds no information, only CPU time).
                 A fixed stratified split holds out 450 images (25%) for evaluation.
    npz          guided-diffusion's sample format: arr_0 uint8 NHWC, optional arr_1 labels.
    image folder every .png/.jpg/.jpeg/.webp under a directory, resized (shorter side) and
                 centre-cropped to `resolution`; the class is the name of the first
                 sub-folder ("subfolder") or the file name up to its first "_" ("prefix",
                 guided-diffusion's image_datasets.py), or none.

A data set is anything with __len__, get(indices) -> (x, y or None) and num_classes.
"""
import pathlib

import numpy as np
import torch

__all__ = ["ArrayDataset", "ImageFolderDataset", "digits_dataset", "npz_dataset", "load_dataset",
           "uint8_to_float", "float_to_uint8", "DIGITS_HOLDOUT"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DIGITS_HOLDOUT = 450  # images of load_digits held out for evaluation (stratified, seed 0)


def uint8_to_float(arr):
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.as_tensor(np.asarray(arr)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def float_to_uint8(x):
    """[-1, 1] NCHW -> uint8 NHWC, rounded as guided-diffusion's samplers do."""
    x = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


class ArrayDataset:
    """In-memory images x [N, C, H, W] in [-1, 1] and labels y [N] (or None)."""

    def __init__(self, x, y=None, num_classes=None):
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = None if y is None else torch.as_tensor(y, dtype=torch.long)
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")
        if self.y is not None and num_classes is None:
            num_classes = int(self.y.max()) + 1
        self.num_classes = num_classes

    def __len__(self):
        return len(self.x)

    @property
    def image_shape(self):
        return tuple(self.x.shape[1:])

    def get(self, indices):
        return self.x[indices], None if self.y is None else self.y[indices]


def digits_split(split="train"):
    """load_digits as uint8-scaled floats: (x [N, 1, 8, 8] in [-1, 1], y [N]) for one split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32) / 16.0 * 2 - 1  # 0..16 grey levels -> [-1, 1]
    idx_train, idx_test = train_test_split(np.arange(len(x)), test_size=DIGITS_HOLDOUT,
                                           random_state=0, stratify=data.target)
    idx = {"train": idx_train, "test": idx_test, "all": np.arange(len(x))}[split]
    return torch.from_numpy(x[idx, None]), torch.from_numpy(data.target[idx]).long()


def digits_dataset(split="train"):
    x, y = digits_split(split)
    return ArrayDataset(x, y, num_classes=10)


def npz_dataset(path):
    with np.load(path) as f:
        if "arr_0" not in f:
            raise ValueError(f"{path}: expected arr_0 (uint8 NHWC images), found {list(f.keys())}")
        images = f["arr_0"]
        labels = f["arr_1"] if "arr_1" in f else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: arr_0 must be uint8 NHWC, got {images.dtype} {images.shape}")
    return ArrayDataset(uint8_to_float(images), labels)


class ImageFolderDataset:
    """Images under root, loaded lazily; see the module docstring for class_from."""

    def __init__(self, root, resolution, class_from="subfolder", channels=3):
        from PIL import Image  # noqa: F401  (fail early when pillow is missing)

        root = pathlib.Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        self.resolution, self.channels = int(resolution), channels
        self.y, self.num_classes, self.class_names = None, None, None
        if class_from is not None:
            names = [self._class_name(root, p, class_from) for p in self.files]
            self.class_names = sorted(set(names))
            index = {n: i for i, n in enumerate(self.class_names)}
            self.y = torch.tensor([index[n] for n in names], dtype=torch.long)
            self.num_classes = len(self.class_names)

    @staticmethod
    def _class_name(root, path, class_from):
        if class_from == "subfolder":
            parts = path.relative_to(root).parts
            if len(parts) < 2:
                raise ValueError(f"{path} is not inside a class sub-folder of {root}")
            return parts[0]
        if class_from == "prefix":
            return path.name.split("_")[0]
        raise ValueError(f"class_from must be 'subfolder', 'prefix' or None, got {class_from!r}")

    def __len__(self):
        return len(self.files)

    @property
    def image_shape(self):
        return (self.channels, self.resolution, self.resolution)

    def _load(self, path):
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            scale = self.resolution / min(im.size)
            size = (max(self.resolution, round(im.width * scale)),
                    max(self.resolution, round(im.height * scale)))
            im = im.resize(size, Image.BICUBIC)
            left, top = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
            im = im.crop((left, top, left + self.resolution, top + self.resolution))
            arr = np.asarray(im, dtype=np.uint8).reshape(self.resolution, self.resolution, -1)
        return arr

    def get(self, indices):
        indices = torch.as_tensor(indices).reshape(-1).tolist()
        x = uint8_to_float(np.stack([self._load(self.files[i]) for i in indices]))
        return x, None if self.y is None else self.y[indices]


def load_dataset(spec, resolution=None, class_from="subfolder", channels=3):
    """'digits' (or 'digits:test'), a .npz file, or an image folder."""
    if spec.startswith("digits"):
        split = spec.partition(":")[2] or "train"
        return digits_dataset(split)
    path = pathlib.Path(spec)
    if path.suffix == ".npz":
        if not path.exists():
            raise FileNotFoundError(f"data file {path} does not exist")
        return npz_dataset(path)
    if resolution is None:
        raise ValueError("an image folder needs --resolution")
    return ImageFolderDataset(path, resolution, class_from, channels)
