"""Sinusoidal timestep embedding of ADM (Dhariwal & Nichol 2021), as guided-diffusion computes it.

    f_i = exp(-ln(max_period) * i / half),  i = 0 .. half-1,  half = dim // 2
    emb(t) = [cos(t * f), sin(t * f)]        (cosine half FIRST, unlike the Transformer paper)

Always float32, whatever the model dtype, and t may be fractional (rescale_timesteps=True gives
t * 1000 / T). An odd dim is zero-padded by one column.
"""
import math

import torch

__all__ = ["timestep_embedding"]


def timestep_embedding(timesteps, dim, max_period=10000):
    """timesteps [N] (int or float) -> [N, dim] float32."""
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must be 1-D [N], got shape {list(timesteps.shape)}")
    half = dim // 2
    # Same op order as guided-diffusion (scale the arange, then divide) so fp32 rounding matches.
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
