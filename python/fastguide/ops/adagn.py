"""Fused adaptive GroupNorm (AdaGN), as in ADM's ResBlock with use_scale_shift_norm:

    y = act((GroupNorm(x) * weight + bias) * (1 + scale) + shift)

x is [N, C, *spatial] (contiguous or channels-last), scale and shift are [N, C]. Statistics are
always computed in float32 (float64 for float64 input); y has x's dtype and layout.
"""
import torch
import torch.nn.functional as F

from .. import _extension  # noqa: F401  (registers torch.ops.fastguide)
from ._checks import check_float, check_param, kernel_layout_like

__all__ = ["group_norm_act", "group_norm_act_eager", "group_norm_act_reference"]

_ACTS = {"silu": True, None: False}


def _check(x, num_groups, weight, bias, scale, shift, act, eps):
    check_float(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, *spatial] with at least 2 dims, got shape {list(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    n, c = x.shape[0], x.shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise ValueError(f"num_groups={num_groups} must be positive and divide the channel count C={c}")
    check_param(weight, "weight", (c,), x)
    check_param(bias, "bias", (c,), x)
    check_param(scale, "scale", (n, c), x)
    check_param(shift, "shift", (n, c), x)
    if act not in _ACTS:
        raise ValueError(f"act must be 'silu' or None, got {act!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return _ACTS[act]


def group_norm_act(x, num_groups, weight=None, bias=None, scale=None, shift=None, act="silu",
                   eps=1e-5):
    """Fused GroupNorm -> (1 + scale) * h + shift -> activation, differentiable in every tensor."""
    silu = _check(x, num_groups, weight, bias, scale, shift, act, eps)
    y, _, _ = torch.ops.fastguide.group_norm_act(x, num_groups, weight, bias, scale, shift, silu,
                                                 float(eps))
    return y


def group_norm_act_reference(x, num_groups, weight=None, bias=None, scale=None, shift=None,
                             act="silu", eps=1e-5):
    """Pure-PyTorch oracle: the whole chain in float32 (float64 for float64 x), one cast at the end."""
    silu = _check(x, num_groups, weight, bias, scale, shift, act, eps)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def up(t):
        return None if t is None else t.to(acc)

    # GroupNorm written out (F.group_norm refuses groups of a single element).
    n, c = x.shape[0], x.shape[1]
    xg = x.to(acc).reshape(n, num_groups, -1)
    mean = xg.mean(dim=2, keepdim=True)
    var = (xg - mean).square().mean(dim=2, keepdim=True)
    h = ((xg - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    cshape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        h = h * up(weight).view(cshape)
    if bias is not None:
        h = h + up(bias).view(cshape)
    bshape = (n, c) + (1,) * (x.dim() - 2)
    if scale is not None:
        h = h * (1 + up(scale).view(bshape))
    if shift is not None:
        h = h + up(shift).view(bshape)
    if silu:
        h = F.silu(h)
    return h.to(x.dtype)


def group_norm_act_eager(x, num_groups, weight=None, bias=None, scale=None, shift=None,
                         act="silu", eps=1e-5):
    """The chain guided-diffusion runs, op for op: GroupNorm32 (statistics in float32 on an
    upcast copy, cast back to x's dtype), then h * (1 + scale) + shift in x's dtype, then SiLU.
    The known-good alternative of the "fused" backend (fastguide.dispatch) and the benchmarks'
    eager baseline; differentiable through autograd."""
    silu = _check(x, num_groups, weight, bias, scale, shift, act, eps)

    def f32(t):
        return None if t is None else t.float()

    h = F.group_norm(x.float(), num_groups, f32(weight), f32(bias), eps).to(x.dtype)
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    if scale is not None:
        h = h * (1 + scale.to(x.dtype).view(shape))
    if shift is not None:
        h = h + shift.to(x.dtype).view(shape)
    return F.silu(h) if silu else h


# ---- torch.library registrations ------------------------------------------------------------

def _stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastguide::group_norm_act")
def _fake_forward(x, num_groups, weight, bias, scale, shift, silu, eps):
    n = x.shape[0]
    stats = x.new_empty((n, num_groups), dtype=_stats_dtype(x))
    return kernel_layout_like(x), stats, torch.empty_like(stats)


@torch.library.register_fake("fastguide::group_norm_act_backward")
def _fake_backward(grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift, silu):
    n, c = x.shape[0], x.shape[1]
    acc = _stats_dtype(x)
    return (kernel_layout_like(x), x.new_empty((c,), dtype=acc), x.new_empty((c,), dtype=acc),
            x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc))


def _setup_context(ctx, inputs, output):
    x, num_groups, weight, bias, scale, shift, silu, _eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)
    ctx.num_groups, ctx.silu = num_groups, silu


def _backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
    dx, dw, db, dscale, dshift = torch.ops.fastguide.group_norm_act_backward(
        grad_y, x, mean, rstd, ctx.num_groups, weight, bias, scale, shift, ctx.silu)

    def cast(g, like, needed):
        return g.to(like.dtype) if (like is not None and needed) else None

    need = ctx.needs_input_grad
    return (dx if need[0] else None, None, cast(dw, weight, need[2]), cast(db, bias, need[3]),
            cast(dscale, scale, need[4]), cast(dshift, shift, need[5]), None, None)


torch.library.register_autograd("fastguide::group_norm_act", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "group_norm_act supports first-order gradients only (its backward is not differentiable); "
        "use backend='reference' for double backward")


torch.library.register_autograd("fastguide::group_norm_act_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)
