"""The variational bound on -log p(x_0) in bits per dimension (Ho et al. 2020, eq. 5; Nichol &
Dhariwal 2021), as ADM's calc_bpd_loop and scripts/image_nll.py compute it:

    L = L_T + Σ_{t≥1} L_{t-1} + L_0
    L_T      prior_bpd: KL(q(x_T | x_0) ‖ N(0, I))
    L_{t-1}  KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)) at a fresh x_t ~ q(x_t | x_0)
    L_0      -log p(x_0 | x_1) under the discretized Gaussian decoder

Each term is a mean over dimensions divided by ln 2. The sum over t is over the process's
(possibly respaced) steps.
"""
import math

import torch

from .losses import mean_flat, normal_kl, vb_terms_bpd

__all__ = ["prior_bpd", "calc_bpd_loop"]


def prior_bpd(diffusion, x_start):
    """L_T per sample [B]: what no model can change, small for a well-chosen schedule."""
    t = torch.full((x_start.shape[0],), diffusion.num_timesteps - 1, dtype=torch.long,
                   device=x_start.device)
    mean, _, log_variance = diffusion.q_mean_variance(x_start, t)
    zero = torch.zeros_like(mean)
    return mean_flat(normal_kl(mean, log_variance, zero, zero)) / math.log(2.0)


@torch.no_grad()
def calc_bpd_loop(diffusion, model, x_start, clip_denoised=True, model_kwargs=None,
                  randn_like=None, progress=False):
    """Every term of the bound for a batch x_start, t from T-1 down to 0.

    Returns {'total_bpd' [B], 'prior_bpd' [B], 'vb' [B, T], 'xstart_mse' [B, T], 'mse' [B, T]},
    column t of the [B, T] terms belonging to step t. randn_like (default torch.randn_like)
    draws each step's noise, once per step in loop order.
    """
    from ..sampling.progress import sampling_steps  # fastguide.sampling builds on diffusion

    randn_like = randn_like or torch.randn_like
    batch, steps = x_start.shape[0], diffusion.num_timesteps
    vb, xstart_mse, mse = (x_start.new_zeros(batch, steps) for _ in range(3))
    for i in sampling_steps(reversed(range(steps)), disable=not progress):
        t = torch.full((batch,), i, dtype=torch.long, device=x_start.device)
        noise = randn_like(x_start)
        x_t = diffusion.q_sample(x_start, t, noise)
        out = vb_terms_bpd(diffusion, model, x_start, x_t, t, clip_denoised=clip_denoised,
                           model_kwargs=model_kwargs)
        vb[:, i] = out["output"]
        xstart_mse[:, i] = mean_flat((out["pred_xstart"] - x_start) ** 2)
        eps = diffusion.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
        mse[:, i] = mean_flat((eps - noise) ** 2)
    prior = prior_bpd(diffusion, x_start)
    return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb,
            "xstart_mse": xstart_mse, "mse": mse}
