"""Every deterministic sampler converges to the exact probability-flow ODE solution with its
theoretical order.

Gaussian data y ~ N(μ, s²) has the exact denoiser D(x, σ) = μ + (x − μ)·s²/(s² + σ²), and the
ODE dx/dσ = (x − D)/σ has the closed-form solution x(σ) = μ + (x₀ − μ)·√((s² + σ²)/(s² + σ₀²)).
Each sampler integrates from σ₀ = 80 to σ_min = 0.002 on EDM's schedule (ρ = 7) with N steps;
the slope of log(max error) against log N, fitted over a range of N, must lie within ±0.25 of
the order. Everything is float64 on small tensors, so the runs are exact and cheap.

On this schedule the first steps sit at σ ≫ s, where the solution is nearly linear in σ, so the
lower-order warm-up steps of the multistep methods (lms, unipc, dpmpp_3m_sde) contribute error
terms with tiny constants and the main method's order shows over these N (asymptotically the
order-1 warm-up would cap lms at 2; the N ranges below are where the k-step term dominates).
"""
import math

import pytest
import torch

from fastguide.sampling import SAMPLERS, schedules

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian_denoiser(x, sigma, **unused):
    c = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return MU + (x - MU) * S ** 2 / (S ** 2 + c ** 2)


def exact_ode_solution(x_start, sigma_start, sigma_end):
    return MU + (x_start - MU) * math.sqrt((S ** 2 + sigma_end ** 2) / (S ** 2 + sigma_start ** 2))


Z = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def max_error(name, n, options, to_zero=False):
    """Max |x_N − x(σ_end)| after n steps of sampler `name` from σ_max."""
    sigmas = schedules.karras(n + (0 if to_zero else 1), SIGMA_MIN, SIGMA_MAX)
    if not to_zero:
        sigmas = sigmas[:-1]  # end at σ_min: the ODE's order, without the step to σ = 0
    x_start = Z * SIGMA_MAX
    x = SAMPLERS[name](gaussian_denoiser, x_start, sigmas, disable=True, **options)
    return float((x - exact_ode_solution(x_start, SIGMA_MAX, float(sigmas[-1]))).abs().max())


def fitted_order(name, steps, options):
    errors = [max_error(name, n, options) for n in steps]
    logs_n = [math.log(n) for n in steps]
    logs_e = [math.log(e) for e in errors]
    mean_n, mean_e = sum(logs_n) / len(logs_n), sum(logs_e) / len(logs_e)
    slope = (sum((a - mean_n) * (b - mean_e) for a, b in zip(logs_n, logs_e))
             / sum((a - mean_n) ** 2 for a in logs_n))
    return -slope, errors


SHORT, LONG = [32, 64, 128], [128, 256, 512]
CASES = [
    # name, options, theoretical order, step counts
    ("euler", {}, 1, SHORT),
    ("ddim", {}, 1, SHORT),
    ("euler_ancestral", {"eta": 0.0}, 1, SHORT),
    ("lms", {"order": 1}, 1, SHORT),
    ("heun", {}, 2, SHORT),
    ("dpm_2", {}, 2, SHORT),
    ("dpm_2_ancestral", {"eta": 0.0}, 2, SHORT),
    ("dpmpp_2m", {}, 2, SHORT),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2, SHORT),
    ("dpmpp_sde", {"eta": 0.0}, 2, SHORT),
    ("dpmpp_2m_sde", {"eta": 0.0}, 2, SHORT),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2, SHORT),
    ("dpmpp_2m_sde_heun", {"eta": 0.0}, 2, SHORT),
    ("lms", {"order": 2}, 2, LONG),
    ("unipc", {"order": 1}, 2, SHORT),
    ("unipc", {"order": 2}, 3, SHORT),
    ("unipc", {"order": 2, "variant": "bh1"}, 3, LONG),
    ("dpmpp_3m_sde", {"eta": 0.0}, 3, SHORT),
    ("lms", {"order": 3}, 3, LONG),
    # DPM-Solver-fast with a budget K ≡ 2 (mod 3): third-order steps and a last second-order one.
    ("dpm_solver_fast", {}, 3, [62, 125, 251]),
    ("unipc", {"order": 3}, 4, SHORT),
    ("unipc", {"order": 3, "variant": "bh1"}, 4, SHORT),
    ("lms", {"order": 4}, 4, LONG),
]


@pytest.mark.parametrize("name,options,order,steps", CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}"
                              for c in CASES])
def test_convergence_order(name, options, order, steps):
    slope, errors = fitted_order(name, steps, options)
    assert abs(slope - order) <= 0.25, (slope, errors)
    assert errors[-1] < errors[0]


def test_every_deterministic_sampler_is_covered():
    deterministic = {"euler", "heun", "ddim", "dpm_2", "dpmpp_2m", "lms", "unipc",
                     "dpm_solver_fast"}
    stochastic_with_eta = {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral",
                           "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}
    always_stochastic = {"ddpm", "log_snr_ancestral"}
    assert deterministic | stochastic_with_eta | always_stochastic == set(SAMPLERS)
    assert {c[0] for c in CASES} == deterministic | stochastic_with_eta


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2", "dpmpp_2m", "lms", "unipc",
                                  "dpm_solver_fast", "dpmpp_3m_sde", "dpmpp_2m_sde",
                                  "dpmpp_sde", "dpmpp_2s_ancestral", "euler_ancestral"])
def test_the_step_to_sigma_zero(name):
    """With the usual σ list ending in 0, the last step lands on D(x, σ_min) (lms extrapolates
    its slopes instead), and it adds at most O(σ_min²) to the ODE error at σ_min: D(x, σ_min)
    and x(0) differ by (x − μ)·σ_min²/(2s²) to leading order."""
    options = {"eta": 0.0} if name in ("dpmpp_3m_sde", "dpmpp_2m_sde", "dpmpp_sde",
                                       "dpmpp_2s_ancestral", "euler_ancestral") else {}
    sigmas = schedules.karras(24, SIGMA_MIN, SIGMA_MAX)
    x_start = Z * SIGMA_MAX
    at_min = SAMPLERS[name](gaussian_denoiser, x_start, sigmas[:-1], disable=True, **options)
    at_zero = SAMPLERS[name](gaussian_denoiser, x_start, sigmas, disable=True, **options)
    if name != "lms":
        expected = gaussian_denoiser(at_min, torch.full((len(Z),), SIGMA_MIN, dtype=Z.dtype))
        torch.testing.assert_close(at_zero, expected, rtol=1e-12, atol=1e-12)
    error_at_min = (at_min - exact_ode_solution(x_start, SIGMA_MAX, SIGMA_MIN)).abs().max()
    error_at_zero = (at_zero - exact_ode_solution(x_start, SIGMA_MAX, 0.0)).abs().max()
    assert float(error_at_zero) <= float(error_at_min) + 1e-4, (error_at_zero, error_at_min)
