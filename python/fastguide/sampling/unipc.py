"""UniPC (Zhao et al. 2023, "UniPC: A unified predictor-corrector framework for fast sampling of
diffusion models"), multistep, on the data prediction D(x, σ), in λ = −log σ (α = 1).

Step i goes from σ_{i−1} (sample x, network output m_0 there) to σ_i, h = log(σ_{i−1}/σ_i),
using the previous outputs m_k at λ_{i−1−k}: r_k = (λ_{i−1−k} − λ_{i−1})/h (< 0),
D_k = (m_k − m_0)/r_k. With B(h) = e^(−h) − 1 ("bh2") or −h ("bh1"), and

    g_1 = (e^(−h) − 1)/(−h) − 1,   g_{n+1} = g_n/(−h) − 1/(n+1)!,   b_n = n!·g_n / B(h),

UniP-p, the predictor (order p):
    x̃ = (σ_i/σ_{i−1})·x + (1 − e^(−h))·m_0 − B(h)·Σ_{k<p} a_k·D_k,
    R_{p−1}·a = b_{1..p−1},   R_p = [r_k^(n−1)]_{n,k=1..p}   (a = [½] for p = 2);
UniC-p, the corrector, with the output m̃ = D(x̃, σ_i) at the new point (r_p = 1):
    x = (σ_i/σ_{i−1})·x + (1 − e^(−h))·m_0 − B(h)·(Σ_{k<p} c_k·D_k + c_p·(m̃ − m_0)),
    R_p·c = b_{1..p}   (c = [½] for p = 1).

m̃ is also the next step's m_0, so the corrector costs no extra network call: one call a step.
For p = 2 and p = 1 the order conditions fix a₁ and c₁ only to leading order; ½ is the authors'
choice. UniPC-p with UniC is of order p + 1; the first steps warm up at orders 1, 2, ... The
last step has no corrector (nothing is evaluated after it), and a step to σ = 0 is x = m̃, the
network's output at the last prediction.
"""
import math

import torch

from .base import check_choice, check_order, check_sigmas, denoise, report
from .progress import sampling_steps

__all__ = ["unipc_coefficients", "unipc_step", "sample_unipc"]


def _solve(matrix, rhs):
    """Gaussian elimination with partial pivoting, in double precision on the host."""
    n = len(rhs)
    a = [list(row) + [b] for row, b in zip(matrix, rhs)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            a[r] = [v - f * w for v, w in zip(a[r], a[col])]
    out = [0.0] * n
    for r in reversed(range(n)):
        out[r] = (a[r][n] - sum(a[r][k] * out[k] for k in range(r + 1, n))) / a[r][r]
    return out


def unipc_coefficients(h, rks, variant="bh2"):
    """(B(h), b_1..p) for p = len(rks) + 1 ratios (rks: r_1..r_{p−1}; r_p = 1 is appended)."""
    hh = -h
    B_h = math.expm1(hh) if variant == "bh2" else hh
    p = len(rks) + 1
    g, factorial, b = math.expm1(hh) / hh - 1, 1, []
    for n in range(1, p + 1):
        b.append(g * factorial / B_h)
        factorial *= n + 1
        g = g / hh - 1 / factorial
    return B_h, b


def unipc_step(x, m_0, history, sigma, sigma_next, order, variant="bh2", m_new=None):
    """The predictor (m_new None) or the corrector (m_new = D(x̃, σ_next)) of one UniPC step.

    history: [(m_k, h_k)], newest first, the previous outputs and their λ-distance behind
    σ (h_k = λ(σ) − λ_k > 0). order p: the predictor uses p − 1 of them, the corrector too.
    """
    h = math.log(sigma / sigma_next)
    rks = [-h_k / h for _, h_k in history[:order - 1]]
    diffs = [(m_k - m_0) / r_k for (m_k, _), r_k in zip(history, rks)]
    B_h, b = unipc_coefficients(h, rks, variant)
    base = math.exp(-h) * x - math.expm1(-h) * m_0
    rows = [[r ** n for r in rks + [1.0]] for n in range(order)]
    if m_new is None:
        if not diffs:
            return base
        a = [0.5] if order == 2 else _solve([row[:-1] for row in rows[:-1]], b[:-1])
        return base - B_h * sum(a_k * d for a_k, d in zip(a, diffs))
    c = [0.5] if order == 1 else _solve(rows, b)
    correction = sum(c_k * d for c_k, d in zip(c, diffs)) + c[-1] * (m_new - m_0)
    return base - B_h * correction


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, extra_args=None, callback=None, disable=False, order=2,
                 variant="bh2"):
    """UniPC, deterministic: UniP-p predictor + UniC corrector, one network call a step.

    Options: order p (1–3, default 2, which the authors advise for guided sampling; the order
    of accuracy is p + 1), variant ("bh2", default, or "bh1": B(h) = e^(−h) − 1 or −h).
    """
    sigmas, values = check_sigmas(sigmas, x)
    order = check_order("order", order, 1, 3)
    check_choice("variant", variant, ("bh1", "bh2"))
    extra_args = extra_args or {}
    num_steps = len(values) - 1
    m_0 = None
    history = []  # [(m_k, λ-distance behind the current σ)], newest first
    for i in sampling_steps(num_steps, disable):
        sigma, sigma_next = values[i], values[i + 1]
        if m_0 is None:
            m_0 = denoise(denoiser, x, sigmas[i], extra_args)
        report(callback, x=x, i=i, sigma=sigmas[i], sigma_hat=sigmas[i], denoised=m_0)
        if sigma_next == 0:
            x = m_0
            break
        step_order = min(order, len(history) + 1)
        x_pred = unipc_step(x, m_0, history, sigma, sigma_next, step_order, variant)
        if i == num_steps - 1:
            x = x_pred
            break
        m_new = denoise(denoiser, x_pred, sigmas[i + 1], extra_args)
        x = unipc_step(x, m_0, history, sigma, sigma_next, step_order, variant, m_new)
        h = math.log(sigma / sigma_next)
        history = ([(m_0, h)] + [(m_k, h_k + h) for m_k, h_k in history])[:order - 1]
        m_0 = m_new
    return x
