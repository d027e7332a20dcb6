"""Finished batches of a `fastguide sample` run, kept on disk until the whole run is written,
so that a run killed after hours loses at most the batch in flight: rerunning the same command
reuses every finished batch.

Layout: <out>/.partial/<settings key>/<batch key>.npz. The settings key hashes every option
that changes the images (and the size and mtime of the checkpoint files), so a changed command
never reuses stale batches; the batch key hashes the batch's seeds and labels, which with the
per-seed generators fix its images.
"""
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np

__all__ = ["BatchCache", "settings_key"]


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_identity(spec):
    path = pathlib.Path(str(spec))
    if not path.is_file():
        return spec  # a shipped model's or a preset's name
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def settings_key(settings, checkpoint_keys=("model", "classifier", "upsampler")):
    """A short hash of the settings dict, with checkpoint paths replaced by their identity."""
    settings = dict(settings)
    for k in checkpoint_keys:
        if settings.get(k):
            settings[k] = _file_identity(settings[k])
    return _digest(settings)


class BatchCache:
    def __init__(self, out_dir, key):
        self.root = pathlib.Path(out_dir) / ".partial"
        self.dir = self.root / key

    def _path(self, seeds, labels):
        return self.dir / f"{_digest([list(seeds), None if labels is None else list(labels)])}.npz"

    def load(self, seeds, labels):
        """The batch's uint8 images if an earlier run finished it, else None."""
        path = self._path(seeds, labels)
        if not path.exists():
            return None
        with np.load(path) as f:
            if f["seeds"].tolist() != list(seeds):  # a hash collision: sample again
                return None
            return f["images"]

    def save(self, seeds, labels, images):
        """Written to a temporary name and renamed: a kill mid-write leaves no torn batch."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(seeds, labels)
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, seeds=np.asarray(seeds, dtype=np.int64), images=images)
        os.replace(tmp, path)

    def clear(self):
        """After the outputs are written: the partial batches are no longer needed."""
        shutil.rmtree(self.root, ignore_errors=True)
