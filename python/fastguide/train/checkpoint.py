"""Training checkpoints: one file, <run_dir>/checkpoint.pt, replaced atomically.

The state is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over the old checkpoint (os.replace is atomic on POSIX and Windows). A run killed at any
moment leaves either the old or the new checkpoint, never a torn one; a stale temporary file is
ignored and overwritten by the next save.
"""
import io
import os
import pathlib

import torch

__all__ = ["save_atomic", "load_training_state", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_atomic(state, path):
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(path.name + ".tmp")
    _write_bytes(tmp, buffer.getvalue())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # directories cannot be opened on some platforms
    return path


def load_training_state(path):
    """The saved dict (tensors, numbers, strings; nothing that would execute code)."""
    return torch.load(path, map_location="cpu", weights_only=True)
