"""ADM building blocks: ResBlock (AdaGN or additive embedding, optional BigGAN up/down) and the
plain Upsample / Downsample layers.

Module and parameter names mirror guided-diffusion's, so its state dicts load unchanged. Each norm
is a GroupNormAct that also applies the SiLU which follows it in guided-diffusion; the SiLU's slot
in the nn.Sequential is kept as an nn.Identity so that every index (hence every key) is unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .norm import GroupNormAct

__all__ = ["conv_nd", "zero_module", "Upsample", "Downsample", "ResBlock", "EmbedSequential",
           "maybe_checkpoint"]


def conv_nd(dims, *args, **kwargs):
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    return (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[dims - 1](*args, **kwargs)


def zero_module(module):
    """guided-diffusion zero-initialises the last layer of each residual branch and the output."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def maybe_checkpoint(fn, enabled, *args):
    """Gradient checkpointing when asked for and when autograd is recording. Non-reentrant, so it
    works with frozen parameters (classifier guidance only needs d/dx) and keeps dropout's RNG."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (for dims=3 only the inner two axes), then an optional 3x3 conv."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels, self.dims = channels, out_channels, dims
        if use_conv:
            self.conv = conv_nd(dims, channels, out_channels, 3, padding=1)
        elif out_channels != channels:
            raise ValueError("Upsample without a conv cannot change the channel count")
        else:
            self.conv = None

    def forward(self, x):
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key `op`), or 2x2 average pooling without parameters."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels = channels, out_channels
        stride = (1, 2, 2) if dims == 3 else 2
        if use_conv:
            self.op = conv_nd(dims, channels, out_channels, 3, stride=stride, padding=1)
        elif out_channels != channels:
            raise ValueError("Downsample without a conv cannot change the channel count")
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    """ADM residual block (Dhariwal & Nichol 2021, Sec. 3 and App. A).

        h = conv(resample(SiLU(GN(x))))
        AdaGN:    h = conv(dropout(SiLU(GN(h) * (1 + scale) + shift))),  [scale, shift] = W e
        additive: h = conv(dropout(SiLU(GN(h + W e))))
        out = skip(resample(x)) + h

    e is SiLU(emb) (emb_layers = SiLU, Linear). up/down resample both paths (BigGAN style).
    """

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_conv=False,
                 use_scale_shift_norm=False, dims=2, use_checkpoint=False, up=False, down=False,
                 backend="fused"):
        super().__init__()
        out_channels = out_channels or channels
        self.channels, self.out_channels, self.dims = channels, out_channels, dims
        self.use_scale_shift_norm, self.use_checkpoint = use_scale_shift_norm, use_checkpoint

        self.in_layers = nn.Sequential(
            GroupNormAct(channels, backend=backend), nn.Identity(),
            conv_nd(dims, channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNormAct(out_channels, backend=backend), nn.Identity(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            kernel, pad = (3, 1) if use_conv else (1, 0)
            self.skip_connection = conv_nd(dims, channels, out_channels, kernel, padding=pad)

    def forward(self, x, emb):
        return maybe_checkpoint(self._forward, self.use_checkpoint, x, emb)

    def _forward(self, x, emb):
        in_norm, _, in_conv = self.in_layers
        h = in_norm(x)  # GroupNorm + SiLU
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = in_conv(h)

        # The projection runs in its own dtype (fp32 in mixed precision); the fused norm takes
        # fp32 scale/shift directly, which is more accurate than rounding them to fp16 first.
        e = self.emb_layers(emb.to(self.emb_layers[1].weight.dtype))
        out_norm, _, dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)  # scale first, as in guided-diffusion
            h = out_norm(h, scale=scale, shift=shift)
        else:
            e = e.to(h.dtype).reshape(*e.shape, *([1] * self.dims))
            h = out_norm(h + e)
        h = out_conv(dropout(h))
        return self.skip_connection(x) + h


class EmbedSequential(nn.Sequential):
    """nn.Sequential that also hands the timestep embedding to the ResBlocks in it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x
