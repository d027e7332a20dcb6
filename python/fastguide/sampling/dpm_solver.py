"""DPM-Solver-fast (Lu et al. 2022, "DPM-Solver: A fast ODE solver for diffusion probabilistic
model sampling in around 10 steps", §3.4 and Algorithms 1–2): singlestep solvers of orders 1–3
on the noise prediction ε(x, σ) = (x − D(x, σ))/σ, in λ = −log σ, h = λ_next − λ, α = 1:

    DPM-Solver-1:  x_next = x − σ_next·(e^h − 1)·ε(x, λ)                        (= DDIM)
    DPM-Solver-2:  u = x − σ_s·(e^(rh) − 1)·ε,  λ_s = λ + r·h, r = ½,
                   x_next = x − σ_next·(e^h − 1)·ε − σ_next/(2r)·(e^h − 1)·(ε(u, λ_s) − ε)
    DPM-Solver-3:  r₁ = ⅓, r₂ = ⅔, λ_sk = λ + r_k·h,
                   u₁ = x − σ_s1·(e^(r₁h) − 1)·ε,  D₁ = ε(u₁, λ_s1) − ε,
                   u₂ = x − σ_s2·(e^(r₂h) − 1)·ε − σ_s2·(r₂/r₁)·((e^(r₂h) − 1)/(r₂h) − 1)·D₁,
                   D₂ = ε(u₂, λ_s2) − ε,
                   x_next = x − σ_next·(e^h − 1)·ε − σ_next/r₂·((e^h − 1)/h − 1)·D₂

"fast" spends a budget of K network calls on M = ⌊K/3⌋ + 1 steps, uniform in λ: orders
3, ..., 3, 2, 1 when K ≡ 0 (mod 3), else 3, ..., 3, K mod 3. So it is third order when
K ≡ 2 (mod 3), and its last step is first order otherwise (as the paper chose for few calls).
"""
import math

import torch

from .base import check_sigmas, denoise, report
from .progress import sampling_steps

__all__ = ["dpm_solver_orders", "dpm_solver_step", "sample_dpm_solver_fast"]


def dpm_solver_orders(nfe):
    """The orders of DPM-Solver-fast's steps for a budget of nfe network calls."""
    if nfe < 1:
        return []
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


def dpm_solver_step(denoiser, x, sigma, sigma_next, order, extra_args, denoised=None):
    """One DPM-Solver-{1,2,3} step from σ to σ_next > 0 (floats); denoised = D(x, σ) if known."""
    if denoised is None:
        denoised = denoise(denoiser, x, sigma, extra_args)
    eps = (x - denoised) / sigma
    h = math.log(sigma / sigma_next)

    def eps_at(u, s):  # ε at λ + s·h
        sigma_s = sigma * math.exp(-s * h)
        return (u - denoise(denoiser, u, sigma_s, extra_args)) / sigma_s, sigma_s

    x_1 = x - (sigma_next * math.expm1(h)) * eps
    if order == 1:
        return x_1
    if order == 2:
        r = 0.5
        sigma_s = sigma * math.exp(-r * h)
        u = x - (sigma_s * math.expm1(r * h)) * eps
        eps_s, _ = eps_at(u, r)
        return x_1 - (sigma_next / (2 * r) * math.expm1(h)) * (eps_s - eps)
    r1, r2 = 1 / 3, 2 / 3
    sigma_s1, sigma_s2 = sigma * math.exp(-r1 * h), sigma * math.exp(-r2 * h)
    u1 = x - (sigma_s1 * math.expm1(r1 * h)) * eps
    d1 = eps_at(u1, r1)[0] - eps
    u2 = (x - (sigma_s2 * math.expm1(r2 * h)) * eps
          - (sigma_s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1)) * d1)
    d2 = eps_at(u2, r2)[0] - eps
    return x_1 - (sigma_next / r2 * (math.expm1(h) / h - 1)) * d2


@torch.no_grad()
def sample_dpm_solver_fast(denoiser, x, sigmas, extra_args=None, callback=None, disable=False):
    """DPM-Solver-fast, deterministic, with its own steps (uniform in λ = −log σ).

    It takes from sigmas only the endpoints and the budget: it runs from σ_0 to the last
    positive σ, spending len(sigmas) − 1 network calls in all. If sigmas ends in 0, one of
    those calls is the final x = D(x, σ_min) (the step to σ = 0); the interior σ's are not
    used. No options.
    """
    sigmas, values = check_sigmas(sigmas, x)
    extra_args = extra_args or {}
    budget = len(values) - 1
    sigma_end = values[-1]
    if sigma_end == 0:
        budget, sigma_end = budget - 1, values[-2]
    orders = dpm_solver_orders(budget)
    # M + 1 noise levels uniform in λ, from σ_0 to sigma_end (both exactly).
    lam_start, lam_end = -math.log(values[0]), -math.log(sigma_end)
    levels = [values[0]] + [math.exp(-(lam_start + (lam_end - lam_start) * k / len(orders)))
                            for k in range(1, len(orders))] + [sigma_end] * (len(orders) > 0)
    for i in sampling_steps(len(orders) + (values[-1] == 0), disable):
        denoised = denoise(denoiser, x, levels[i], extra_args)
        sigma = x.new_tensor(levels[i])
        report(callback, x=x, i=i, sigma=sigma, sigma_hat=sigma, denoised=denoised)
        if i == len(orders):  # the step to σ = 0
            x = denoised
        else:
            x = dpm_solver_step(denoiser, x, levels[i], levels[i + 1], orders[i], extra_args,
                                denoised)
    return x
