"""Multi-head self-attention at UNet shapes, on the output of ADM's 1x1 qkv convolution:

    out = softmax(q^T k / sqrt(ch)) v   per head, ch = C / num_heads

qkv is [N, 3C, L], stored contiguous or as the transpose of a contiguous [N, L, 3C] token
tensor (what a channels-last model produces: no copy is needed either way). Channel order
"legacy" is [heads, 3, ch] (every released ADM model but the 64x64 one), "new" is [3, heads, ch].
The output is [N, C, L] in qkv's layout, head-major channels. The backward recomputes the
probabilities from the saved log-sum-exp, so no L x L matrix is kept for it.

On CUDA, fp16/bf16 with a head dim that is a multiple of 8 up to 256 run on tensor cores
(FlashAttention-2's algorithm on mma.sync, both layouts read in place, deterministic backward);
float32 and other head dims run SIMT kernels. `attention_cuda_plan` says which, and with which
tiles, for any device, without one.

Accuracy on CUDA (tests/test_attention_cuda.py): float32 within 1e-5 of the fp32 reference
(max abs error over max abs value); fp16/bf16 within 3 units of the output dtype's rounding
(3 * 2^-11 fp16, 3 * 2^-8 bf16) of the fp32 maths on the same rounded inputs in the forward, 6 in
the gradients (tests/test_attention_tc_model.py's FWD_UNITS, BWD_UNITS): the probabilities P and
dS are rounded to the input dtype before their matmuls, as in FlashAttention-2.
"""
import math

import torch

from .. import _extension  # noqa: F401  (registers torch.ops.fastguide)
from ._checks import check_float

__all__ = ["attention", "attention_reference", "attention_cuda_plan", "ORDERS", "DEVICE_LIMITS"]

ORDERS = ("legacy", "new")

# (shared-memory opt-in per block in bytes, multiprocessors, compute capability) of GPUs the
# CUDA kernels are sized for: the 99 KB opt-in of sm_86/sm_89 bounds every portable tile.
DEVICE_LIMITS = {
    "A100": (166912, 108, 8, 0),
    "A10": (101376, 72, 8, 6),
    "RTX 3090": (101376, 82, 8, 6),
    "L4": (101376, 58, 8, 9),
    "L40S": (101376, 142, 8, 9),
    "RTX 4090": (101376, 128, 8, 9),
    "H100": (232448, 132, 9, 0),
    "H200": (232448, 132, 9, 0),
}


def _check(qkv, num_heads, order):
    check_float(qkv, "qkv")
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be [N, 3*C, L] (3-D), got shape {list(qkv.shape)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[1] % (3 * num_heads) != 0:
        raise ValueError(f"qkv has {qkv.shape[1]} channels, which 3 * num_heads = {3 * num_heads} "
                         "does not divide")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def attention(qkv, num_heads, order="legacy"):
    """Fused multi-head attention (differentiable). See the module docstring for the layout."""
    _check(qkv, num_heads, order)
    out, _ = torch.ops.fastguide.attention(qkv, num_heads, order == "new")
    return out


def attention_reference(qkv, num_heads, order="legacy"):
    """Pure-PyTorch oracle in fp32 (fp64 for fp64), with guided-diffusion's scaling: q and k are
    each multiplied by ch^(-1/4). Returns a contiguous [N, C, L] in qkv's dtype."""
    _check(qkv, num_heads, order)
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    n, c3, length = qkv.shape
    ch = c3 // (3 * num_heads)
    x = qkv.to(acc)
    parts = (x.reshape(n, num_heads, 3, ch, length).unbind(2) if order == "legacy"
             else x.reshape(n, 3, num_heads, ch, length).unbind(1))
    q, k, v = parts
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("nhct,nhcs->nhts", q * scale, k * scale), dim=-1)
    return torch.einsum("nhts,nhcs->nhct", w, v).reshape(n, -1, length).to(qkv.dtype)


def _device_limits(device):
    if isinstance(device, str) and device in DEVICE_LIMITS:
        return DEVICE_LIMITS[device]
    if isinstance(device, tuple) and len(device) == 4 and all(isinstance(v, int) for v in device):
        return device
    cuda = device is None or (isinstance(device, torch.device) and device.type == "cuda") or \
        (isinstance(device, str) and device.startswith("cuda"))
    if not cuda:
        raise ValueError(f"device must be one of {sorted(DEVICE_LIMITS)}, a (smem_optin, num_sms, "
                         f"major, minor) tuple or a CUDA device, got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError("no CUDA device here: name one of DEVICE_LIMITS or give (smem_optin, "
                         "num_sms, major, minor)")
    p = torch.cuda.get_device_properties(torch.device("cuda") if device is None else device)
    return p.shared_memory_per_block_optin, p.multi_processor_count, p.major, p.minor


def attention_cuda_plan(dtype, head_dim, length, batch_heads, device=None):
    """The CUDA kernels and tiles attention would use: a line such as
    "tensor cores: Dp 64, forward 128x64, ..." or "<reason>: SIMT kernels". device is a name in
    DEVICE_LIMITS, a (smem_optin, num_sms, major, minor) tuple, or a CUDA device (default: the
    current one). Needs no GPU for a named device or a tuple."""
    if isinstance(dtype, bool) or dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype!r}")
    for name, v in (("head_dim", head_dim), ("length", length), ("batch_heads", batch_heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "head_dim" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'head_dim' else 'non-negative'} "
                             f"int, got {v!r}")
    limits = _device_limits(device)
    return torch.ops.fastguide.attention_cuda_plan(dtype, head_dim, length, batch_heads, *limits)


# ---- torch.library registrations ------------------------------------------------------------

def _tokens_major(t):
    return t.dim() == 3 and not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def _empty_like_layout(qkv, channels):
    n, _, length = qkv.shape
    if _tokens_major(qkv):
        return qkv.new_empty((n, length, channels)).transpose(1, 2)
    return qkv.new_empty((n, channels, length))


@torch.library.register_fake("fastguide::attention")
def _fake_forward(qkv, num_heads, new_order):
    n, c3, length = qkv.shape
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    return _empty_like_layout(qkv, c3 // 3), qkv.new_empty((n, num_heads, length), dtype=acc)


@torch.library.register_fake("fastguide::attention_backward")
def _fake_backward(grad_out, qkv, out, lse, num_heads, new_order):
    return _empty_like_layout(qkv, qkv.shape[1])


def _setup_context(ctx, inputs, output):
    qkv, num_heads, new_order = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, out, lse)
    ctx.num_heads, ctx.new_order = num_heads, new_order


def _backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    grad = torch.ops.fastguide.attention_backward(grad_out, qkv, out, lse, ctx.num_heads,
                                                  ctx.new_order)
    return grad, None, None


torch.library.register_autograd("fastguide::attention", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("attention supports first-order gradients only; use the reference "
                              "backend for double backward")


torch.library.register_autograd("fastguide::attention_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)
