"""Self-attention of ADM: AttentionBlock (in the UNet) and AttentionPool2d (the classifier head).

All attention goes through `qkv_attention`, the one function that the attention kernel replaces.

The 1x1 Conv1d projections (keys qkv, proj_out, qkv_proj, c_proj, weights [out, in, 1]) are kept
as modules so state dicts load, but are applied as matmuls on [N, L, C] tokens: for a
channels-last feature map the tokens are then a free view, and the result is channels-last again.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import dispatch
from ..ops.attention import attention
from .blocks import maybe_checkpoint, zero_module
from .norm import GroupNormAct, check_backend

__all__ = ["qkv_attention", "qkv_attention_reference", "qkv_attention_sdpa", "ATTENTION_BACKENDS",
           "AttentionBlock", "AttentionPool2d", "resolve_heads"]

ORDERS = ("legacy", "new")


def _split_qkv(qkv, num_heads, order):
    """[N, 3*C, L] -> q, k, v each [N, heads, ch, L].

    legacy: channels are [heads, 3, ch] (q, k, v blocks per head; every released model but 64x64).
    new:    channels are [3, heads, ch] (all q, then all k, then all v).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    n, width, length = qkv.shape
    if width % (3 * num_heads) != 0:
        raise ValueError(f"qkv has {width} channels, not divisible by 3 * num_heads={num_heads}")
    ch = width // (3 * num_heads)
    if order == "legacy":
        return qkv.reshape(n, num_heads, 3, ch, length).unbind(2)
    return qkv.reshape(n, 3, num_heads, ch, length).unbind(1)


def qkv_attention_reference(qkv, num_heads, order="legacy"):
    """Pure PyTorch, exactly guided-diffusion's QKVAttention(Legacy): q and k are EACH scaled by
    ch^(-1/4) (same as 1/sqrt(ch) overall, but it keeps fp16 logits smaller); fp32 softmax."""
    q, k, v = _split_qkv(qkv, num_heads, order)
    scale = 1 / math.sqrt(math.sqrt(q.shape[2]))
    w = torch.einsum("nhct,nhcs->nhts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).to(w.dtype)
    a = torch.einsum("nhts,nhcs->nhct", w, v)
    return a.reshape(qkv.shape[0], -1, qkv.shape[2])


ATTENTION_BACKENDS = dispatch.ATTENTION_BACKENDS


def qkv_attention_sdpa(qkv, num_heads, order="legacy"):
    """torch's scaled_dot_product_attention (whichever of its kernels torch picks)."""
    q, k, v = (t.transpose(-1, -2) for t in _split_qkv(qkv, num_heads, order))  # [N, H, L, ch]
    a = F.scaled_dot_product_attention(q, k, v)
    n, h, length, ch = a.shape
    return a.transpose(1, 2).reshape(n, length, h * ch).transpose(1, 2)


def qkv_attention(qkv, num_heads, order="legacy", backend="fused"):
    """Multi-head attention softmax(q^T k / sqrt(ch)) v over L tokens: qkv [N, 3*C, L] -> [N, C, L].

    Output channels are head-major (head h owns channels h*ch .. (h+1)*ch - 1) for both orders.
    backend: "kernel" (fastguide.ops.attention, which takes the channels-last token layout as
    it is), "sdpa" (torch's scaled_dot_product_attention), "reference" (the explicit einsum
    version above, guided-diffusion's arithmetic), or "fused": the kernel or SDPA, whichever
    the dispatch table (fastguide.dispatch) says is faster for this call.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    path = dispatch.resolve("attention", backend, qkv.device,
                            lambda: dispatch.attention_key(qkv, num_heads))
    if path == "reference":
        return qkv_attention_reference(qkv, num_heads, order)
    if path == "sdpa":
        return qkv_attention_sdpa(qkv, num_heads, order)
    return attention(qkv, num_heads, order)


def resolve_heads(channels, num_heads, num_head_channels):
    """num_head_channels != -1 overrides num_heads (guided-diffusion's rule)."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels != 0:
        raise ValueError(
            f"num_head_channels={num_head_channels} must divide the channel count {channels}")
    return channels // num_head_channels


def _pointwise(tokens, conv):
    """A 1x1 Conv1d applied to [N, L, C_in] tokens -> [N, L, C_out]."""
    return F.linear(tokens, conv.weight[:, :, 0], conv.bias)


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(GN(x)))) over all spatial positions."""

    def __init__(self, channels, num_heads=1, num_head_channels=-1, use_checkpoint=False,
                 use_new_attention_order=False, backend="fused"):
        super().__init__()
        self.channels = channels
        self.num_heads = resolve_heads(channels, num_heads, num_head_channels)
        self.order = "new" if use_new_attention_order else "legacy"
        self.use_checkpoint = use_checkpoint
        self.backend = check_backend(backend, ATTENTION_BACKENDS)
        norm_backend = backend if backend in dispatch.NORM_BACKENDS else "fused"
        self.norm = GroupNormAct(channels, act=None, backend=norm_backend)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        return maybe_checkpoint(self._forward, self.use_checkpoint, x)

    def _forward(self, x):
        n, c, *spatial = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [N, L, C]
        qkv = _pointwise(tokens, self.qkv)
        a = qkv_attention(qkv.transpose(1, 2), self.num_heads, self.order, self.backend)
        h = _pointwise(a.transpose(1, 2), self.proj_out)
        return x + h.transpose(1, 2).reshape(n, c, *spatial)

    def extra_repr(self):
        return f"heads={self.num_heads}, order={self.order!r}, backend={self.backend!r}"


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends to [mean, all positions], plus a
    learned positional embedding [C, H*W + 1]; the result for the mean token is projected to the
    logits. Always the NEW qkv order in guided-diffusion, whatever use_new_attention_order says."""

    def __init__(self, spacial_dim, embed_dim, num_heads_channels, output_dim=None,
                 backend="fused"):
        super().__init__()
        self.spacial_dim = spacial_dim
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = zero_module(nn.Conv1d(embed_dim, output_dim or embed_dim, 1))
        self.num_heads = resolve_heads(embed_dim, 1, num_heads_channels)
        self.backend = check_backend(backend, ATTENTION_BACKENDS)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)  # [N, H*W, C]
        if tokens.shape[1] != self.spacial_dim ** 2:
            raise ValueError(
                f"the attention pool expects a {self.spacial_dim}x{self.spacial_dim} feature map "
                f"(from image_size = {self.spacial_dim} * 2^(levels-1)), got spatial shape "
                f"{list(x.shape[2:])}")
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.t().to(tokens.dtype)
        qkv = _pointwise(tokens, self.qkv_proj)
        a = qkv_attention(qkv.transpose(1, 2), self.num_heads, "new", self.backend)
        # Only the mean token's output is used, so only it is projected.
        return F.linear(a[:, :, 0], self.c_proj.weight[:, :, 0], self.c_proj.bias)

    def extra_repr(self):
        return f"spacial_dim={self.spacial_dim}, heads={self.num_heads}, backend={self.backend!r}"
