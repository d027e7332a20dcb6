"""The per-step update functions (the units a fused kernel will replace): identities between
them and with the papers' own formulas."""
import torch

from fastguide.sampling import steps
from fastguide.diffusion import alpha_sigma, log_snr_from_sigma

G = torch.Generator().manual_seed(0)
X = torch.randn(4, 3, dtype=torch.float64, generator=G)
D = torch.randn(4, 3, dtype=torch.float64, generator=G)
Z = torch.randn(4, 3, dtype=torch.float64, generator=G)
SIGMA, SIGMA_NEXT = torch.tensor(2.5, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)


def test_first_order_dpm_solver_is_euler():
    torch.testing.assert_close(steps.dpmpp_2m_step(X, D, SIGMA, SIGMA_NEXT),
                               steps.euler_step(X, D, SIGMA, SIGMA_NEXT))


def test_ancestral_eta_zero_is_euler_and_sigmas_add_up():
    down, up = steps.ancestral_sigmas(SIGMA, SIGMA_NEXT, 0.0)
    torch.testing.assert_close(steps.ancestral_step(X, D, SIGMA, down, up, Z),
                               steps.euler_step(X, D, SIGMA, SIGMA_NEXT))
    down, up = steps.ancestral_sigmas(SIGMA, SIGMA_NEXT, 0.6)
    torch.testing.assert_close(down ** 2 + up ** 2, SIGMA_NEXT ** 2)


def test_ddim_step_in_sigma_space():
    # x_t = √ᾱ·x_σ with σ² = (1 − ᾱ)/ᾱ: DDIM(η) on x_t is ancestral_step(η) on x_σ.
    abar, abar_prev = 1 / (1 + SIGMA ** 2), 1 / (1 + SIGMA_NEXT ** 2)
    eps = (X - D) / SIGMA
    for eta in (0.0, 0.5, 1.0):
        x_prev = steps.ddim_step(D, eps, abar, abar_prev, eta, Z, 1.0)
        down, up = steps.ancestral_sigmas(SIGMA, SIGMA_NEXT, eta)
        torch.testing.assert_close(x_prev / abar_prev.sqrt(),
                                   steps.ancestral_step(X, D, SIGMA, down, up, Z))


def test_log_snr_step_is_the_papers_formula():
    lam, lam_next = log_snr_from_sigma(SIGMA), log_snr_from_sigma(SIGMA_NEXT)
    a, s = alpha_sigma(lam)
    a_next, s_next = alpha_sigma(lam_next)
    z = a * X
    for v in (0.0, 0.3, 1.0):
        r = torch.exp(lam - lam_next)
        mean = r * (a_next / a) * z + (1 - r) * a_next * D
        var = ((1 - r) * s_next ** 2) ** (1 - v) * ((1 - r) * s ** 2) ** v
        z_next = mean + var.sqrt() * Z
        torch.testing.assert_close(steps.log_snr_ancestral_step(X, D, SIGMA, SIGMA_NEXT, v, Z),
                                   z_next / a_next)
    # v = 0 is the exact posterior: DDPM's ancestral step (η = 1).
    down, up = steps.ancestral_sigmas(SIGMA, SIGMA_NEXT, 1.0)
    torch.testing.assert_close(steps.log_snr_ancestral_step(X, D, SIGMA, SIGMA_NEXT, 0.0, Z),
                               steps.ancestral_step(X, D, SIGMA, down, up, Z))


def test_heun_step_is_exact_for_linear_ode():
    # dx/dσ = x/σ (D = 0) has x ∝ σ, which the trapezoidal rule integrates exactly.
    zero = torch.zeros_like(X)
    x_pred = steps.euler_step(X, zero, SIGMA, SIGMA_NEXT)
    torch.testing.assert_close(steps.heun_step(X, zero, x_pred, zero, SIGMA, SIGMA_NEXT),
                               X * SIGMA_NEXT / SIGMA)


def test_churn_step_adds_the_missing_variance():
    sigma_hat = SIGMA * 1.2
    out = steps.churn_step(X, SIGMA, sigma_hat, Z, 1.0)
    torch.testing.assert_close(out, X + (sigma_hat ** 2 - SIGMA ** 2).sqrt() * Z)


def test_ddpm_step_masks_noise_at_t0():
    mask = torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    out = steps.ddpm_step(D, torch.zeros_like(D), Z, mask)
    torch.testing.assert_close(out, D + mask * Z)
