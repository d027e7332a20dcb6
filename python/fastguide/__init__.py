"""fastguide: fast guided diffusion for PyTorch (ADM models, guidance, EDM, fused kernels)."""
from ._extension import build_info
from . import ops
from . import nn
from . import diffusion
from . import sampling
from .nn.checkpoint import load_checkpoint, save_model
from . import pipeline
from .pipeline import ADMPipeline
from . import editing
from .dispatch import dispatch_report

__version__ = "0.1.0"
__all__ = ["build_info", "dispatch_report", "ops", "nn", "diffusion", "sampling", "pipeline",
           "ADMPipeline", "editing",
           "load_checkpoint", "save_model", "__version__"]
