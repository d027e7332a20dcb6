"""How every sampling loop walks its steps: a tqdm progress bar, and the models' host-side
input checks (fastguide.nn.base.input_checks) on the first step only, so that bad labels still
get a clear error while later steps never wait on the device."""
import contextlib

from tqdm.auto import tqdm

from ..nn.base import input_checks

__all__ = ["sampling_steps"]


def sampling_steps(steps, disable=False):
    """Yield from `steps` (an iterable or a count) under a progress bar."""
    if isinstance(steps, int):
        steps = range(steps)
    for n, i in enumerate(tqdm(steps, disable=disable)):
        with contextlib.nullcontext() if n == 0 else input_checks(False):
            yield i
