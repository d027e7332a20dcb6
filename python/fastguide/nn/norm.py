"""GroupNormAct: the norm layer of every ADM block, on the fused AdaGN op."""
import torch
from torch import nn

from .. import dispatch
from ..ops import group_norm_act, group_norm_act_eager, group_norm_act_reference

BACKENDS = dispatch.MODEL_BACKENDS
_IMPLS = {"kernel": group_norm_act, "eager": group_norm_act_eager,
          "reference": group_norm_act_reference}


def check_backend(backend, allowed=dispatch.MODEL_BACKENDS):
    """A model's backend switch: "fused" (default), "kernel" or "reference" (see
    fastguide.dispatch). Layers also take their family's alternative ("eager", "sdpa")."""
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {backend!r}")
    return backend


class GroupNormAct(nn.Module):
    """GroupNorm(num_groups, C) with an optional per-sample (1 + scale) * h + shift and SiLU.

    Parameters are named `weight` and `bias` like nn.GroupNorm, so guided-diffusion state dicts
    load unchanged. `backend` is one of fastguide.dispatch.NORM_BACKENDS: "fused" (the kernel or
    the eager chain, whichever the dispatch table says is faster here), "kernel", "eager" or
    "reference".
    """

    def __init__(self, num_channels, num_groups=32, eps=1e-5, act="silu", affine=True,
                 backend="fused"):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.num_channels, self.num_groups, self.eps, self.act = num_channels, num_groups, eps, act
        self.backend = check_backend(backend, dispatch.NORM_BACKENDS)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x, scale=None, shift=None):
        path = dispatch.resolve("adagn", self.backend, x.device, lambda: dispatch.adagn_key(x))
        return _IMPLS[path](x, self.num_groups, self.weight, self.bias, scale, shift, self.act,
                            self.eps)

    def extra_repr(self):
        return (f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, "
                f"act={self.act!r}, backend={self.backend!r}")
