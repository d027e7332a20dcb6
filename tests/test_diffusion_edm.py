"""EDM's preconditionings and losses, and the log-SNR process's maths."""
import math

import pytest
import torch

from fastguide.diffusion import (EDMLoss, EDMPrecond, LogSNRProcess, VELoss, VEPrecond, VPLoss,
                                 VPPrecond, alpha_sigma, log_snr_from_sigma, sigma_from_log_snr,
                                 vp_sigma, vp_sigma_inv)


class Recorder(torch.nn.Module):
    """A stand-in network: records its inputs and returns a fixed output."""

    def __init__(self, value=0.0):
        super().__init__()
        self.value, self.calls = value, []

    def forward(self, x, c_noise, **kwargs):
        self.calls.append((x, c_noise, kwargs))
        return torch.full_like(x, self.value)


def test_edm_preconditioning_coefficients():
    net = Recorder(1.0)
    precond = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    out = precond(x, sigma, y=torch.tensor([1, 2, 3]))
    col = sigma.reshape(-1, 1, 1, 1)
    c_in = 1 / (col ** 2 + 0.25).sqrt()
    torch.testing.assert_close(net.calls[0][0], c_in * x)       # unit-variance input
    torch.testing.assert_close(net.calls[0][1], sigma.log() / 4)
    assert "y" in net.calls[0][2]
    expected = 0.25 / (col ** 2 + 0.25) * x + col * 0.5 / (col ** 2 + 0.25).sqrt()
    torch.testing.assert_close(out, expected)


def test_vp_and_ve_preconditioning():
    t = torch.tensor([1e-5, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(vp_sigma_inv(vp_sigma(t)), t)
    net = Recorder(2.0)
    vp = VPPrecond(net)
    assert vp.sigma_min == pytest.approx(float(vp_sigma(1e-5)))
    sigma = vp_sigma(t)
    x = torch.ones(3, 1, dtype=torch.float64)
    out = vp(x, sigma)
    torch.testing.assert_close(net.calls[-1][1], 999 * t)
    torch.testing.assert_close(out, x - sigma[:, None] * 2.0)  # D = x − σ·ε
    ve = VEPrecond(net)
    out = ve(x, sigma)
    torch.testing.assert_close(net.calls[-1][1], (sigma / 2).log())
    torch.testing.assert_close(out, x + sigma[:, None] * 2.0)


def test_preconditioning_rejects_wrong_output_shape():
    with pytest.raises(ValueError, match="network output has shape"):
        EDMPrecond(lambda x, c: x[:, :1])(torch.zeros(2, 3), torch.ones(2))


def test_edm_loss_is_one_for_the_exact_denoiser():
    # With σ_data = s and D exact for y ~ N(0, s²): λ(σ)·E[(D − y)²] = 1 at every σ.
    s = 0.5
    loss_fn = EDMLoss(sigma_data=s)

    def exact(x, sigma):
        return s ** 2 / (s ** 2 + sigma.reshape(-1, 1) ** 2) * x

    g = torch.Generator().manual_seed(0)
    images = torch.randn(4000, 16, generator=g, dtype=torch.float64) * s
    loss = loss_fn(exact, images, generator=g)
    assert loss.shape == images.shape
    assert float(loss.mean()) == pytest.approx(1.0, rel=0.03)
    log_sigma = loss_fn.sample_sigma(20000, "cpu", generator=g).log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(1.2, rel=0.03)


def test_vp_and_ve_losses_run():
    images = torch.randn(8, 3, 4, 4)
    for loss_fn in (VPLoss(), VELoss()):
        loss = loss_fn(lambda x, sigma, y=None: x * 0, images, model_kwargs={"y": None})
        assert loss.shape == images.shape and torch.isfinite(loss).all()


def test_log_snr_conversions():
    lam = torch.linspace(-20, 20, 41, dtype=torch.float64)
    alpha, sigma = alpha_sigma(lam)
    torch.testing.assert_close(alpha ** 2 + sigma ** 2, torch.ones_like(lam))
    torch.testing.assert_close((alpha ** 2 / sigma ** 2).log(), lam)
    torch.testing.assert_close(sigma_from_log_snr(lam), sigma / alpha)
    torch.testing.assert_close(log_snr_from_sigma(sigma_from_log_snr(lam)), lam)


def test_log_snr_training_distribution_is_truncated_cosine():
    process = LogSNRProcess(-20.0, 20.0)
    assert float(process.log_snr(0.0)) == pytest.approx(20.0)
    assert float(process.log_snr(1.0)) == pytest.approx(-20.0)
    # α² = 1/(1 + tan²θ) = cos²θ with θ = a·u + b: a cosine schedule, truncated to [b, a + b].
    u = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    alpha, _ = alpha_sigma(process.log_snr(u))
    torch.testing.assert_close(alpha ** 2, torch.cos(process.a * u + process.b) ** 2)
    assert process.a + process.b == pytest.approx(math.pi / 2 - math.exp(-10.0), rel=1e-9)
    with pytest.raises(ValueError):
        LogSNRProcess(5.0, -5.0)
