"""Writing a file so that a crash never leaves a torn one: write a temporary file beside the
target, give it the permissions a plain open() would (mkstemp's are 0600), rename it into place."""
import os
import pathlib
import tempfile

__all__ = ["atomic_write"]


def atomic_write(path, write):
    """Call write(tmp_path) on a temporary file in path's directory, then rename it to path.
    A missing directory is a FileNotFoundError that names it."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path
