"""GroupNormAct: the norm layer of every ADM block, on the fused AdaGN op."""
import torch
from torch import nn

from ..ops import group_norm_act, group_norm_act_reference

BACKENDS = ("fused", "reference")


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class GroupNormAct(nn.Module):
    """GroupNorm(num_groups, C) with an optional per-sample (1 + scale) * h + shift and SiLU.

    Parameters are named `weight` and `bias` like nn.GroupNorm, so guided-diffusion state dicts
    load unchanged. `backend` picks the fused op or the pure-PyTorch reference.
    """

    def __init__(self, num_channels, num_groups=32, eps=1e-5, act="silu", affine=True,
                 backend="fused"):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.num_channels, self.num_groups, self.eps, self.act = num_channels, num_groups, eps, act
        self.backend = check_backend(backend)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x, scale=None, shift=None):
        fn = group_norm_act if self.backend == "fused" else group_norm_act_reference
        return fn(x, self.num_groups, self.weight, self.bias, scale, shift, self.act, self.eps)

    def extra_repr(self):
        return (f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, "
                f"act={self.act!r}, backend={self.backend!r}")
