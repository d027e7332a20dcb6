"""Loads the compiled library fastguide._C, which registers the torch.ops.fastguide operators."""
import torch

try:
    from . import _C
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "fastguide's compiled extension (fastguide._C) could not be loaded: "
        f"{e}. fastguide builds against the torch already installed, so install torch first and "
        "then run `pip install --no-build-isolation .` in the fastguide checkout "
        f"(the torch imported now is {torch.__version__})."
    ) from e


def build_info() -> dict:
    """What the library was built with: torch version, CUDA kernels, compiled architectures,
    and the devices the dispatch table has GPU measurements for (fastguide.dispatch; a model's
    per-layer paths: fastguide.dispatch_report(model, *example_inputs))."""
    from .dispatch import TABLE
    return {
        "torch_version": _C.TORCH_VERSION,
        "torch_version_runtime": torch.__version__,
        "cuda": bool(_C.WITH_CUDA),
        "cuda_archs": _C.CUDA_ARCHS.split(),
        "dispatch_kernel_cells": {dev: sum(k[1] == dev for k in TABLE)
                                  for dev in sorted({k[1] for k in TABLE})},
    }
