"""What every ADM model shares: its config, the backend and checkpointing switches, the trunk
precision, and the input checks.

Precision follows guided-diffusion's use_fp16: only the convolutions of input_blocks,
middle_block and output_blocks take the low-precision dtype. The timestep embedding, the Linear
layers, the norms' parameters and the output head stay float32, and norm statistics are always
float32 (GroupNormAct). bfloat16 is handled the same way.
"""
import contextlib
import contextvars
import torch
from torch import nn

from .attention import AttentionBlock, AttentionPool2d
from .blocks import ResBlock
from .embedding import timestep_embedding
from .norm import GroupNormAct, check_backend

__all__ = ["ModelBase", "resolve_dtype", "dtype_name"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TRUNK = ("input_blocks", "middle_block", "output_blocks")


def resolve_dtype(dtype, use_fp16=False):
    """dtype may be None, a torch dtype or its name; use_fp16=True (guided-diffusion) = float16."""
    if dtype is None:
        return torch.float16 if use_fp16 else torch.float32
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype.removeprefix("torch.")]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")
    if use_fp16 and dtype != torch.float16:
        raise ValueError(f"use_fp16=True contradicts dtype={dtype}; pass only one of them")
    return dtype


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


_INPUT_CHECKS = contextvars.ContextVar("fastguide_input_checks", default=True)


@contextlib.contextmanager
def input_checks(enabled):
    """Turn the models' host-side input checks (the y range: a device sync) on or off here.
    Sampling loops run them on their first step only, so later steps never wait on the device."""
    token = _INPUT_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _INPUT_CHECKS.reset(token)


class ModelBase(nn.Module):
    """Mixin for UNet, SuperResUNet and EncoderUNet. Subclasses set self.config (their
    constructor arguments, JSON-ready, plus "kind") and build input_blocks / middle_block."""

    check_inputs = True  # the y range check reads y on the host (a sync); off for CUDA graphs

    # ---- switches -----------------------------------------------------------------------------

    def set_backend(self, backend):
        """The kernel switch of every norm and attention layer (fastguide.dispatch):
        "fused" (per call, the hand-written kernel where a committed GPU measurement shows it
        faster on this device, else the known-good alternative; the default), "kernel" (always
        fastguide's kernels) or "reference" (pure PyTorch)."""
        check_backend(backend)
        for m in self.modules():
            if isinstance(m, (GroupNormAct, AttentionBlock, AttentionPool2d)):
                m.backend = backend
        self.config["backend"] = backend
        return self

    @property
    def backend(self):
        return self.config["backend"]

    def set_checkpointing(self, enabled=True):
        """Gradient checkpointing of every ResBlock and AttentionBlock (off by default)."""
        for m in self.modules():
            if isinstance(m, (ResBlock, AttentionBlock)):
                m.use_checkpoint = bool(enabled)
        self.config["use_checkpoint"] = bool(enabled)
        return self

    # ---- precision ----------------------------------------------------------------------------

    @property
    def dtype(self):
        """The trunk's compute dtype (that of its convolutions)."""
        return self.input_blocks[0][0].weight.dtype

    def convert_trunk(self, dtype):
        """Cast the convolutions of the trunk to dtype, like guided-diffusion's convert_to_fp16."""
        dtype = resolve_dtype(dtype)
        for name in TRUNK:
            for m in getattr(self, name, nn.Module()).modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    m.to(dtype)
        self.config["dtype"] = dtype_name(dtype)
        return self

    def convert_to_fp16(self):
        return self.convert_trunk(torch.float16)

    def convert_to_fp32(self):
        return self.convert_trunk(torch.float32)

    # ---- forward helpers ----------------------------------------------------------------------

    def _check_x(self, x, channels=None):
        cfg = self.config
        channels = channels or self.in_channels
        dims = cfg["dims"]
        if not isinstance(x, torch.Tensor) or x.dim() != dims + 2:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [N, {channels}, {dims} spatial dims], got {shape}")
        if x.shape[1] != channels:
            raise ValueError(f"x has {x.shape[1]} channels, this model takes {channels}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        size = cfg["image_size"]
        spatial = tuple(x.shape[2:]) if dims < 3 else tuple(x.shape[3:])  # 3-D: depth is free
        if size is not None and any(s != size for s in spatial):
            raise ValueError(
                f"image size mismatch: x is {list(x.shape[2:])} but the model was built with "
                f"image_size={size} (set model.config['image_size'] = None to allow any size "
                "divisible by the total downsampling factor)")
        factor = 2 ** (len(cfg["channel_mult"]) - 1)
        if any(s % factor for s in spatial):
            raise ValueError(
                f"x spatial size {list(x.shape[2:])} must be divisible by {factor}, the total "
                f"downsampling factor of {len(cfg['channel_mult'])} levels")

    def _embed_time(self, timesteps, x):
        """Float32 sinusoidal embedding -> time_embed MLP. timesteps: a number, a 0-d or [N]
        tensor (ints or floats; fractional values are legal)."""
        n = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"timesteps must be a scalar or have shape [{n}] (the batch size), "
                             f"got {list(t.shape)}")
        emb = timestep_embedding(t, self.config["model_channels"])
        return self.time_embed(emb.to(self.time_embed[0].weight.dtype))

    def _check_labels(self, y, x):
        k = self.config.get("num_classes")
        if k is None:
            if y is not None:
                raise ValueError("y was given, but this model is unconditional (num_classes=None)")
            return None
        if y is None:
            raise ValueError(f"y is required: this model is class-conditional with num_classes={k}")
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
            got = f"dtype {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise TypeError(f"y must be an int64 tensor of class labels, got {got}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape [{x.shape[0]}], got {list(y.shape)}")
        n_rows = k + 1 if self.config.get("null_class") else k
        # is_compiling() first: torch.compile cannot trace a ContextVar read (fullgraph fails).
        if not torch.compiler.is_compiling() and self.check_inputs and _INPUT_CHECKS.get() and y.numel():
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= n_rows:
                null = f" (label {k} is the null class)" if self.config.get("null_class") else ""
                raise ValueError(f"y out of range: labels must be in [0, {n_rows - 1}]{null}, "
                                 f"got min {lo}, max {hi}")
        return y.to(x.device)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())
