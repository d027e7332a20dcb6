"""The new samplers against independent transcriptions of their published update equations:
k-diffusion's (euler_ancestral, dpm_2, dpm_2_ancestral, dpmpp_sde, dpmpp_2m_sde), the papers'
(DPM-Solver-fast: Lu et al. 2022a, Algorithms 1–2 and §3.4; DPM-Solver++(2S): Lu et al. 2022b,
Algorithm 1; UniPC: Zhao et al. 2023, eq. 6–9 with the B(h) variants; Adams–Bashforth), run for
a few steps on a nonlinear denoiser with recorded noise, in float64.
"""
import math

import numpy as np
import pytest
import torch

from fastguide.sampling import SAMPLERS, schedules
from fastguide.sampling.dpm_solver import dpm_solver_orders
from fastguide.sampling.lms import lms_coefficients

G = torch.Generator().manual_seed(0)
X0 = torch.randn(3, 5, dtype=torch.float64, generator=G)
NOISE = [torch.randn(3, 5, dtype=torch.float64, generator=G) for _ in range(32)]
SIGMAS = [14.0, 6.0, 2.5, 1.1, 0.45, 0.2, 0.0]


def denoiser(x, sigma, **unused):
    """Smooth and nonlinear in x and σ (any function serves to compare equations)."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(0.7 * x) / (1 + 0.2 * s) + 0.05 * torch.sin(s) * x


def D(x, sigma):
    return denoiser(x, torch.full((x.shape[0],), float(sigma), dtype=x.dtype))


class Recorded:
    """A noise_sampler handing out NOISE in order, logging the (σ, σ_next) it was asked for."""

    def __init__(self):
        self.i, self.asked = 0, []

    def __call__(self, sigma, sigma_next):
        self.asked.append((float(sigma), float(sigma_next)))
        self.i += 1
        return NOISE[self.i - 1]


def run(name, sigmas=SIGMAS, **options):
    x = X0 * sigmas[0]
    return SAMPLERS[name](denoiser, x, torch.tensor(sigmas, dtype=torch.float64), disable=True,
                          **options)


def kd_ancestral_step(sigma, sigma_next, eta):
    # k-diffusion's get_ancestral_step
    up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
             ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_euler_ancestral(eta):
    out = run("euler_ancestral", eta=eta, S_noise=0.9, noise_sampler=Recorded())
    x, k = X0 * SIGMAS[0], 0
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        d = (x - D(x, s)) / s
        down, up = kd_ancestral_step(s, s_next, eta)
        x = x + d * (down - s)
        if s_next > 0:
            x, k = x + NOISE[k] * 0.9 * up, k + 1
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_euler_ancestral_at_eta_1_is_ddpm_and_at_0_is_euler():
    for name, other, eta in (("ddpm", "euler_ancestral", 1.0), ("euler", "euler_ancestral", 0.0)):
        noise = iter(NOISE)
        a = run(name, randn_like=lambda x: next(noise))
        noise = iter(NOISE)
        b = run(other, eta=eta, randn_like=lambda x: next(noise))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def kd_dpm_2_step(x, s, s_to):
    d = (x - D(x, s)) / s
    s_mid = math.exp(0.5 * (math.log(s) + math.log(s_to)))
    x_2 = x + d * (s_mid - s)
    d_2 = (x_2 - D(x_2, s_mid)) / s_mid
    return x + d_2 * (s_to - s)


def test_dpm_2():
    x = X0 * SIGMAS[0]
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        x = kd_dpm_2_step(x, s, s_next) if s_next > 0 else D(x, s)
    torch.testing.assert_close(run("dpm_2"), x, rtol=1e-12, atol=1e-12)


def test_dpm_2_ancestral():
    out = run("dpm_2_ancestral", eta=0.8, noise_sampler=Recorded())
    x, k = X0 * SIGMAS[0], 0
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        down, up = kd_ancestral_step(s, s_next, 0.8)
        if down == 0:
            x = D(x, s)
        else:
            x, k = kd_dpm_2_step(x, s, down) + NOISE[k] * up, k + 1
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_lms_is_adams_bashforth_on_uniform_steps():
    sigmas = [5.0 - 0.5 * i for i in range(10)] + [0.0]
    weights = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
               4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for i in range(9):
        for order in range(1, 5):
            expected = [-0.5 * w for w in weights[min(order, i + 1)]]
            assert lms_coefficients(sigmas, i, order) == pytest.approx(expected, abs=1e-12)
    # the sampler: x_{i+1} = x_i + h·Σ_j w_j·d_{i−j}
    x, slopes = X0 * sigmas[0], []
    for i, (s, s_next) in enumerate(zip(sigmas, sigmas[1:])):
        slopes.insert(0, (x - D(x, s)) / s)
        w = weights[min(4, i + 1)]
        x = x + (s_next - s) * sum(wj * d for wj, d in zip(w, slopes))
    torch.testing.assert_close(run("lms", sigmas), x, rtol=1e-12, atol=1e-12)


def test_dpmpp_2s_ancestral_is_the_papers_algorithm_1():
    """DPM-Solver++(2S), r = ½, in the paper's α/σ/λ notation (α = 1, λ = −log σ)."""
    out = run("dpmpp_2s_ancestral", eta=0.7, noise_sampler=Recorded())
    x, k = X0 * SIGMAS[0], 0
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        down, up = kd_ancestral_step(s, s_next, 0.7)
        if down == 0:
            x = D(x, s)
            continue
        lam, lam_next = -math.log(s), -math.log(down)
        h = lam_next - lam
        lam_s = lam + 0.5 * h
        sigma_s = math.exp(-lam_s)
        u = (sigma_s / s) * x - (math.exp(-0.5 * h) - 1) * D(x, s)
        x = (down / s) * x - (math.exp(-h) - 1) * D(u, sigma_s)
        x, k = x + NOISE[k] * up, k + 1
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta,r", [(1.0, 0.5), (0.6, 0.3)])
def test_dpmpp_sde(eta, r):
    recorded = Recorded()
    out = run("dpmpp_sde", eta=eta, r=r, noise_sampler=recorded)
    x, k, asked = X0 * SIGMAS[0], 0, []
    t_fn, sigma_fn = (lambda s: -math.log(s)), (lambda t: math.exp(-t))
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        den = D(x, s)
        if s_next == 0:
            x = x + (x - den) / s * (s_next - s)
            continue
        t, t_next = t_fn(s), t_fn(s_next)
        h = t_next - t
        s_mid = t + h * r
        sd, su = kd_ancestral_step(sigma_fn(t), sigma_fn(s_mid), eta)
        x_2 = (sd / s) * x - math.expm1(t - t_fn(sd)) * den + NOISE[k] * su
        asked.append((s, sigma_fn(s_mid)))
        den_2 = D(x_2, sigma_fn(s_mid))
        sd, su = kd_ancestral_step(s, s_next, eta)
        fac = 1 / (2 * r)
        den_d = (1 - fac) * den + fac * den_2
        x = (sd / s) * x - math.expm1(t - t_fn(sd)) * den_d + NOISE[k + 1] * su
        asked.append((s, s_next))
        k += 2
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)
    flat = [s for pair in recorded.asked for s in pair]
    assert flat == pytest.approx([s for pair in asked for s in pair], rel=1e-12)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_dpmpp_2m_sde(solver_type, eta):
    out = run("dpmpp_2m_sde", eta=eta, solver_type=solver_type, noise_sampler=Recorded())
    x, k, old, h_last = X0 * SIGMAS[0], 0, None, None
    for s, s_next in zip(SIGMAS, SIGMAS[1:]):
        den = D(x, s)
        if s_next == 0:
            x = den
            continue
        h = -math.log(s_next) + math.log(s)
        eta_h = eta * h
        x = s_next / s * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * den
        if old is not None:
            r = h_last / h
            if solver_type == "heun":
                x = x + ((-math.expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * (den - old)
            else:
                x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (den - old)
        if eta:
            x = x + NOISE[k] * s_next * math.sqrt(-math.expm1(-2 * eta_h))
            k += 1
        old, h_last = den, h
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def kd_3m_sde_step(x, den, s, s_next, eta, d_1, d_2, h_1, h_2):
    """k-diffusion's dpmpp_3m_sde step (without noise), transcribed."""
    h = math.log(s) - math.log(s_next)
    h_eta = h * (eta + 1)
    x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * den
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    if h_2 is not None:
        r0, r1 = h_1 / h, h_2 / h
        d1_0, d1_1 = (den - d_1) / r0, (d_1 - d_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
    elif h_1 is not None:
        x = x + phi_2 * (den - d_1) / (h_1 / h)
    return x


def exact_quadratic_3m_step(x, lams, dens, lam_next, eta):
    """(★) of dpm_solver_pp.py by quadrature: x_next = e^(−a)·x + ∫ k·e^(−k(λ_next − λ'))·p(λ')
    dλ' over [λ, λ_next], with p the polynomial through the given (λ_j, D_j) and k = 1 + η."""
    k, lam = 1 + eta, lams[-1]
    nodes, weights = np.polynomial.legendre.leggauss(20)
    taus = 0.5 * (lam_next - lam) * (nodes + 1)
    out = math.exp(-k * (lam_next - lam)) * x
    for tau, w in zip(taus, weights):
        basis = [np.prod([(lam + tau - lams[m]) / (lams[j] - lams[m])
                          for m in range(len(lams)) if m != j]) for j in range(len(lams))]
        p = sum(float(b) * d for b, d in zip(basis, dens))
        out = out + (0.5 * (lam_next - lam) * w * k * math.exp(-k * (lam_next - lam - tau))) * p
    return out


@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_dpmpp_3m_sde_is_the_exact_quadratic_integral(eta):
    """Steps 1 and 2 (orders 1, 2) are k-diffusion's; from step 3 on, D is the quadratic through
    the last three outputs, integrated exactly, where k-diffusion's weight of D'' is half."""
    out = run("dpmpp_3m_sde", eta=eta, noise_sampler=Recorded())
    x, k, lams, dens = X0 * SIGMAS[0], 0, [], []
    for i, (s, s_next) in enumerate(zip(SIGMAS, SIGMAS[1:])):
        den = D(x, s)
        if s_next == 0:
            x = den
            continue
        lams, dens = (lams + [-math.log(s)])[-3:], (dens + [den])[-3:]
        exact = exact_quadratic_3m_step(x, lams, dens, -math.log(s_next), eta)
        h_1 = lams[-1] - lams[-2] if len(lams) > 1 else None
        h_2 = lams[-2] - lams[-3] if len(lams) > 2 else None
        kd = kd_3m_sde_step(x, den, s, s_next, eta, dens[-2] if h_1 else None,
                            dens[-3] if h_2 else None, h_1, h_2)
        if i < 2:
            torch.testing.assert_close(exact, kd, rtol=1e-10, atol=1e-10)
        else:
            assert float((exact - kd).abs().max()) > 1e-4  # the documented deviation
        x = exact
        if eta:
            h = math.log(s / s_next)
            x, k = x + NOISE[k] * s_next * math.sqrt(-math.expm1(-2 * h * eta)), k + 1
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_kdiffusions_3m_weight_makes_it_second_order():
    """Why dpmpp_3m_sde deviates: on the Gaussian problem of test_samplers_order.py (exact ODE
    solution known), k-diffusion's 3M converges at order 2, the exact weight at order 3."""
    mu, sd = 0.3, 0.5
    z = X0.reshape(-1)

    def gauss(x, s):
        return mu + (x - mu) * sd ** 2 / (sd ** 2 + s ** 2)

    def kd_error(n):
        sig = schedules.karras(n + 1).tolist()[:-1]
        x, hist = z * sig[0], []
        for s, s_next in zip(sig, sig[1:]):
            den = gauss(x, s)
            h1 = hist[0][1] if hist else None
            h2 = hist[1][1] if len(hist) > 1 else None
            x = kd_3m_sde_step(x, den, s, s_next, 0.0, hist[0][0] if hist else None,
                               hist[1][0] if len(hist) > 1 else None, h1, h2)
            hist = [(den, math.log(s / s_next))] + hist[:1]
        ratio = (sd ** 2 + sig[-1] ** 2) / (sd ** 2 + sig[0] ** 2)
        exact = mu + (z * sig[0] - mu) * math.sqrt(ratio)
        return float((x - exact).abs().max())
    kd_slope = math.log(kd_error(64) / kd_error(256)) / math.log(4)
    assert 1.7 < kd_slope < 2.3, kd_slope


def phi(k, hh):
    """φ_k(hh): φ_1 = (e^hh − 1)/hh, φ_{k+1} = (φ_k − 1/k!)/hh (UniPC's, at hh = −h)."""
    value = math.expm1(hh) / hh
    for n in range(1, k):
        value = (value - 1 / math.factorial(n)) / hh
    return value


def unipc_transcription(sigmas, order, variant):
    """UniPC-p with UniC, data prediction: R_p(h)·a = g(h)/B(h), g_n = n!·hh·φ_{n+1}(hh)."""
    x = X0 * sigmas[0]
    ms, lams = [D(x, sigmas[0])], [-math.log(sigmas[0])]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            return ms[-1]
        p = min(order, len(ms))
        h = -math.log(s_next) - lams[-1]
        hh = -h
        B = math.expm1(hh) if variant == "bh2" else hh
        g = np.array([math.factorial(n) * hh * phi(n + 1, hh) for n in range(1, p + 1)]) / B
        r = [(lams[-1 - m] - lams[-1]) / h for m in range(1, p)] + [1.0]
        R = np.array([[rk ** n for rk in r] for n in range(p)])
        Ds = [(ms[-1 - m] - ms[-1]) / r[m - 1] for m in range(1, p)]
        base = (s_next / s) * x - math.expm1(hh) * ms[-1]
        a = [0.5] if p == 2 else (np.linalg.solve(R[:-1, :-1], g[:-1]) if p > 2 else [])
        x_pred = base - B * sum(float(ak) * d for ak, d in zip(a, Ds))
        if i == len(sigmas) - 2:
            return x_pred
        m_new = D(x_pred, s_next)
        c = [0.5] if p == 1 else np.linalg.solve(R, g)
        x = base - B * (sum(float(ck) * d for ck, d in zip(c[:-1], Ds))
                        + float(c[-1]) * (m_new - ms[-1]))
        ms, lams = ms + [m_new], lams + [-math.log(s_next)]
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("to_zero", [True, False])
def test_unipc(order, variant, to_zero):
    sigmas = SIGMAS if to_zero else SIGMAS[:-1]
    torch.testing.assert_close(run("unipc", sigmas, order=order, variant=variant),
                               unipc_transcription(sigmas, order, variant),
                               rtol=1e-11, atol=1e-11)


def test_dpm_solver_fast_orders_follow_the_paper():
    # §3.4: K calls, M = ⌊K/3⌋ + 1 steps; K = 3M−3: (M−2)×3, 2, 1; else (M−1)×3, K mod 3.
    assert [dpm_solver_orders(k) for k in range(1, 10)] == [
        [1], [2], [2, 1], [3, 1], [3, 2], [3, 2, 1], [3, 3, 1], [3, 3, 2], [3, 3, 2, 1]]
    for k in range(1, 40):
        assert sum(dpm_solver_orders(k)) == k


def dpm_solver_transcription(x, lam, lam_next, order):
    """Lu et al. 2022a, Algorithms 1–2 (α = 1, σ = e^(−λ)), noise prediction ε = (x − D)/σ."""
    def eps(u, lam_u):
        return (u - D(u, math.exp(-lam_u))) / math.exp(-lam_u)
    sig = lambda l: math.exp(-l)  # noqa: E731
    h = lam_next - lam
    e0 = eps(x, lam)
    if order == 1:
        return x - sig(lam_next) * (math.exp(h) - 1) * e0
    if order == 2:
        s1 = lam + 0.5 * h
        u1 = x - sig(s1) * (math.exp(0.5 * h) - 1) * e0
        return (x - sig(lam_next) * (math.exp(h) - 1) * e0
                - sig(lam_next) * (math.exp(h) - 1) * (eps(u1, s1) - e0))
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = lam + r1 * h, lam + r2 * h
    u1 = x - sig(s1) * (math.exp(r1 * h) - 1) * e0
    d1 = eps(u1, s1) - e0
    u2 = (x - sig(s2) * (math.exp(r2 * h) - 1) * e0
          - sig(s2) * r2 / r1 * ((math.exp(r2 * h) - 1) / (r2 * h) - 1) * d1)
    d2 = eps(u2, s2) - e0
    return (x - sig(lam_next) * (math.exp(h) - 1) * e0
            - sig(lam_next) / r2 * ((math.exp(h) - 1) / h - 1) * d2)


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 7, 9])
@pytest.mark.parametrize("to_zero", [True, False])
def test_dpm_solver_fast(budget, to_zero):
    s_max, s_min = 14.0, 0.2
    # `budget` network calls: with a final σ = 0, one of them is the last x = D(x, σ_end).
    if to_zero:
        sigmas = schedules.karras(budget, s_min, s_max).tolist()
    else:
        sigmas = schedules.karras(budget + 1, s_min, s_max).tolist()[:-1]
    orders = dpm_solver_orders(budget - 1 if to_zero else budget)
    s_end = sigmas[-2] if to_zero else sigmas[-1]
    lams = np.linspace(-math.log(s_max), -math.log(s_end), len(orders) + 1)
    x = X0 * s_max
    for i, order in enumerate(orders):
        x = dpm_solver_transcription(x, lams[i], lams[i + 1], order)
    if to_zero:
        x = D(x, s_end)
    torch.testing.assert_close(run("dpm_solver_fast", sigmas), x, rtol=1e-11, atol=1e-11)
