"""What a sampling run writes, and how it avoids clobbering anything.

OUT/samples_NxHxWxC.npz   guided-diffusion's format: arr_0 uint8 NHWC images, arr_1 int64
                          labels (absent for an unconditional run), in seed order
OUT/grid.png              all images on a grid (one class per column when labels are given)
OUT/seedNNNNNN.png        one per seed, with --per-seed-png
OUT/fastguide_sample.json the run's manifest: the command's settings and the files it wrote

The output directory is checked before any sampling. A directory that already holds the outputs
of an earlier run (its manifest says which files) or files with the names this run would write
is refused unless overwrite=True, which first removes the earlier run's files, so that no
stale per-seed PNG of another seed range survives next to the new ones.
"""
import json
import math
import os
import pathlib

import numpy as np

from ..atomic import atomic_write

__all__ = ["OutputDir", "save_grid", "save_png", "MANIFEST", "saturated_fraction"]

MANIFEST = "fastguide_sample.json"


def _png(array, scale=1):
    from PIL import Image
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_png(array, path, scale=1):
    _png(array, scale).save(path)
    return path


def _class_columns(images, labels, max_columns=32):
    """Tiles laid out with one column per class (in label order), or None when there are too
    many classes for that to be readable."""
    classes = sorted(set(int(v) for v in labels))
    if len(classes) > max_columns or len(classes) < 2:
        return None
    members = {c: [i for i, v in enumerate(labels) if int(v) == c] for c in classes}
    rows = max(len(m) for m in members.values())
    return [[members[c][r] if r < len(members[c]) else None for c in classes]
            for r in range(rows)]


def save_grid(images, path, columns=None, min_tile=32, pad=1, labels=None):
    """uint8 NHWC images -> one PNG grid (tiles enlarged, nearest, to min_tile px, separated by
    pad grey pixels). With labels, one column per class when there are at most 32 classes."""
    n, h, w, c = images.shape
    scale = max(1, math.ceil(min_tile / max(h, w)))
    layout = _class_columns(images, labels) if labels is not None and columns is None else None
    if layout is None:
        columns = columns or math.ceil(math.sqrt(n))
        layout = [[k if k < n else None for k in range(r * columns, (r + 1) * columns)]
                  for r in range(math.ceil(n / columns))]
    th, tw = h * scale, w * scale
    grid = np.full((len(layout) * (th + pad) + pad, len(layout[0]) * (tw + pad) + pad, c), 128,
                   dtype=np.uint8)
    for r, row in enumerate(layout):
        for q, k in enumerate(row):
            if k is not None:
                top, left = pad + r * (th + pad), pad + q * (tw + pad)
                grid[top:top + th, left:left + tw] = images[k].repeat(scale, 0).repeat(scale, 1)
    return save_png(grid, path)


def saturated_fraction(images):
    """The fraction of uint8 pixel values at 0 or 255."""
    return float(((images == 0) | (images == 255)).mean())


class OutputDir:
    """The output directory of one sampling run. check() runs before sampling; write() after."""

    def __init__(self, path, overwrite=False):
        self.path = pathlib.Path(path)
        self.overwrite = overwrite

    def planned(self, n, shape, per_seed_seeds=(), grid=True):
        h, w, c = shape
        names = [f"samples_{n}x{h}x{w}x{c}.npz"] + (["grid.png"] if grid else [])
        return names + [f"seed{s:06d}.png" for s in per_seed_seeds]

    def _earlier_run(self):
        manifest = self.path / MANIFEST
        if not manifest.exists():
            return None
        try:
            return json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            return {"files": []}

    def check(self, planned):
        """Raise FileExistsError / NotADirectoryError / PermissionError with a message before any
        work when the outputs cannot be written, or would replace files without overwrite."""
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--out {self.path} exists and is not a directory")
        parent = next((p for p in [self.path, *self.path.parents] if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"--out {self.path}: cannot create or write in {parent}")
        earlier = self._earlier_run()
        clashes = sorted(n for n in planned if (self.path / n).exists())
        if (earlier is not None or clashes) and not self.overwrite:
            what = (f"the outputs of an earlier run ({len(earlier.get('files', []))} files, listed "
                    f"in {MANIFEST})" if earlier is not None else
                    f"files this run would write ({', '.join(clashes[:3])}"
                    f"{' ...' if len(clashes) > 3 else ''})")
            raise FileExistsError(f"--out {self.path} already holds {what}; pass --overwrite to "
                                  "replace them, or choose another --out")

    def remove_earlier(self):
        """With overwrite: delete the earlier run's files; returns their names."""
        earlier = self._earlier_run() or {"files": []}
        removed = []
        for name in earlier.get("files", []):
            target = self.path / pathlib.Path(name).name  # never outside the directory
            if target.is_file():
                target.unlink()
                removed.append(target.name)
        (self.path / MANIFEST).unlink(missing_ok=True)
        return removed

    def write(self, images, labels, seeds, grid=True, per_seed=False, png_scale=1,
              settings=None):
        """Write the outputs (each file atomically) and the manifest; returns the paths."""
        self.path.mkdir(parents=True, exist_ok=True)
        n, h, w, c = images.shape
        npz = self.path / f"samples_{n}x{h}x{w}x{c}.npz"
        arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
        atomic_write(npz, lambda tmp: np.savez(tmp, **arrays))
        written = [npz]
        if grid:
            path = self.path / "grid.png"
            atomic_write(path, lambda tmp: save_grid(images, tmp, labels=labels))
            written.append(path)
        if per_seed:
            for image, seed in zip(images, seeds):
                path = self.path / f"seed{seed:06d}.png"
                atomic_write(path, lambda tmp: save_png(image, tmp, png_scale))
                written.append(path)
        manifest = {"files": [p.name for p in written], "seeds": len(seeds),
                    "settings": settings or {}}
        atomic_write(self.path / MANIFEST, lambda tmp: pathlib.Path(tmp).write_text(
            json.dumps(manifest, indent=1, default=str) + "\n"))
        return written
