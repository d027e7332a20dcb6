"""guided-diffusion's sample and reference batches: .npz files holding arr_0, uint8 images
[N, H, W, 3] (NHWC, RGB, 0..255), and, in the published reference batches, the precomputed
Inception statistics mu, sigma (pool_3) and mu_s, sigma_s (mixed_6/conv).

The images are streamed from the zip member in batches, as the evaluator does, so that a batch
of 50,000 256x256 images (9.8 GB) never has to fit in memory.
"""
import contextlib
import pathlib
import zipfile

import numpy as np

__all__ = ["BatchError", "ImageBatch", "open_batch", "STAT_KEYS"]

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class BatchError(ValueError):
    """An .npz that is not a guided-diffusion image batch."""


class ImageBatch:
    """One .npz batch: .shape (N, H, W, 3), .stats (dict of the four arrays, or None), and
    .batches(size), an iterator over uint8 [n, H, W, 3] arrays in file order."""

    def __init__(self, path, shape, stats):
        self.path, self.shape, self.stats = path, shape, stats

    def __len__(self):
        return self.shape[0]

    @property
    def image_size(self):
        return self.shape[1:3]

    def batches(self, size):
        with _npy_member(self.path, "arr_0") as (f, _, _, _):
            row = int(np.prod(self.shape[1:]))
            for lo in range(0, self.shape[0], size):
                n = min(size, self.shape[0] - lo)
                data = _read_exactly(f, n * row, self.path)
                yield np.frombuffer(data, dtype=np.uint8).reshape(n, *self.shape[1:])


@contextlib.contextmanager
def _npy_member(path, name):
    """(file object positioned at the data, shape, fortran_order, dtype) of NAME.npy in path."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BatchError(f"{path} is not an .npz file ({e})") from None
    with archive:
        if f"{name}.npy" not in archive.namelist():
            keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            raise BatchError(f"{path} has no {name} (uint8 NHWC images); its arrays: {keys}")
        with archive.open(f"{name}.npy") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}[version]
                shape, fortran, dtype = read_header(f)
            except (ValueError, KeyError) as e:
                raise BatchError(f"{path}: {name} is not a readable .npy array ({e})") from None
            yield f, shape, fortran, dtype


def _read_exactly(f, size, path):
    chunks, got = [], 0
    while got < size:
        chunk = f.read(size - got)
        if not chunk:
            raise BatchError(f"{path}: arr_0 is truncated ({got} of {size} bytes read)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_stats(path, keys):
    present = [k for k in STAT_KEYS if k in keys]
    if not present:
        return None
    if len(present) < len(STAT_KEYS):
        missing = [k for k in STAT_KEYS if k not in present]
        raise BatchError(f"{path} has precomputed statistics {present} but not {missing}")
    with np.load(path) as f:
        stats = {k: f[k] for k in STAT_KEYS}
    for mu, sigma in (("mu", "sigma"), ("mu_s", "sigma_s")):
        d = stats[mu].shape
        if len(d) != 1 or stats[sigma].shape != (d[0], d[0]):
            raise BatchError(f"{path}: {mu} {stats[mu].shape} and {sigma} "
                             f"{stats[sigma].shape} are not a mean [D] and covariance [D, D]")
        if not (np.isfinite(stats[mu]).all() and np.isfinite(stats[sigma]).all()):
            raise BatchError(f"{path}: {mu} or {sigma} holds NaN or inf")
    return stats


def open_batch(path, name="batch", min_images=1):
    """The batch at path, checked: arr_0 uint8 [N >= min_images, H, W, 3], C order. name is what
    the user called it (e.g. 'REF'), used in the messages."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} batch {path} does not exist")
    with _npy_member(path, "arr_0") as (_, shape, fortran, dtype):
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
            raise BatchError(
                f"{name} batch {path}: arr_0 must be uint8 images [N, H, W, 3] (NHWC, RGB), got "
                f"{dtype} {list(shape)}")
        if fortran:
            raise BatchError(f"{name} batch {path}: arr_0 is stored in Fortran order; "
                             "re-save it with np.savez(path, arr_0=np.ascontiguousarray(x))")
        if shape[0] < min_images:
            raise BatchError(f"{name} batch {path} has {shape[0]} images; at least {min_images} "
                             f"are needed")
        with zipfile.ZipFile(path) as archive:
            keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    return ImageBatch(path, tuple(int(s) for s in shape), _read_stats(path, keys))
