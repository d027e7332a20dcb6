"""σ schedules (fastguide.sampling.schedules): each against its formula, the uniform signature
the command line relies on, the model's own discrete σ's, and the errors bad arguments raise."""
import math

import pytest
import torch

from fastguide.diffusion import ADMDenoiser, GaussianDiffusion, edm_sigmas, vp_sigma_inv
from fastguide.sampling import (SCHEDULES, ClassifierGuidedDenoiser, UnknownNameError,
                                schedule_options, schedules)


def test_karras_is_edm_sigmas():
    for n in (1, 2, 18, 40):
        torch.testing.assert_close(schedules.karras(n, 0.002, 80.0, 7.0),
                                   edm_sigmas(n, 0.002, 80.0, 7.0), rtol=0, atol=0)
    s = schedules.karras(10, 0.1, 10.0, rho=3.0)
    roots = s[:-1] ** (1 / 3)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(9))


def test_exponential_is_uniform_in_log_sigma():
    s = schedules.exponential(12, 0.01, 50.0)
    assert len(s) == 13 and float(s[-1]) == 0.0
    assert float(s[0]) == pytest.approx(50.0, rel=1e-14)
    assert float(s[-2]) == pytest.approx(0.01, rel=1e-14)
    logs = s[:-1].log()
    torch.testing.assert_close(logs.diff(), logs.diff()[:1].expand(11))


def test_polyexponential():
    torch.testing.assert_close(schedules.polyexponential(9, 0.02, 20.0, rho=1.0),
                               schedules.exponential(9, 0.02, 20.0))
    # log σ_i = log σ_min + (1 − i/(n−1))^ρ·(log σ_max − log σ_min)
    n, rho = 7, 2.5
    expected = [math.exp(math.log(0.02) + (1 - i / (n - 1)) ** rho * math.log(20.0 / 0.02))
                for i in range(n)] + [0.0]
    assert schedules.polyexponential(n, 0.02, 20.0, rho=rho).tolist() == pytest.approx(
        expected, rel=1e-12)


def test_vp_matches_the_continuous_vp_sde():
    # k-diffusion's get_sigmas_vp(n): t uniform from 1 to 10⁻³, σ = √(exp(β_d·t²/2 + β_min·t) − 1)
    n = 11
    t = [1 + i / (n - 1) * (1e-3 - 1) for i in range(n)]
    expected = [math.sqrt(math.exp(19.9 * u ** 2 / 2 + 0.1 * u) - 1) for u in t] + [0.0]
    assert schedules.vp(n).tolist() == pytest.approx(expected, rel=1e-10)
    s = schedules.vp(8, 0.05, 30.0, beta_d=10.0, beta_min=0.5)
    assert float(s[0]) == 30.0 and float(s[-2]) == 0.05
    times = vp_sigma_inv(s[:-1], 10.0, 0.5)
    torch.testing.assert_close(times.diff(), times.diff()[:1].expand(7))


def _adm_denoiser(respacing=""):
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, respacing)
    return ADMDenoiser(lambda x, t, **kw: x, diffusion)


def test_discrete_uses_the_models_own_sigmas_with_iddpm_spacing():
    adm = _adm_denoiser()
    table = adm.sigma_table.double()
    s = schedules.discrete(18, denoiser=adm)
    assert len(s) == 19 and float(s[-1]) == 0.0
    assert all(bool((table == v).any()) for v in s[:-1].float().double())  # no rounding
    # EDM's "iddpm" discretization: u decreasing, σ_i = u[round(i·(len(u) − 1)/(n − 1))]
    u = table.flip(0)
    expected = [float(u[round(i * (len(u) - 1) / 17)]) for i in range(18)] + [0.0]
    assert s.tolist() == pytest.approx(expected, rel=1e-12)
    assert bool((s[:-2] > s[1:-1]).all())
    # a σ range, and through a guidance wrapper
    ranged = schedules.discrete(10, 0.01, 80.0, denoiser=ClassifierGuidedDenoiser(adm, None, 1.0))
    assert float(ranged[0]) <= 80.0 and float(ranged[-2]) >= 0.01
    assert len(schedules.discrete(1, denoiser=adm)) == 2
    full = schedules.discrete(1000, denoiser=adm)
    torch.testing.assert_close(full[:-1], u)
    respaced = _adm_denoiser("25")
    torch.testing.assert_close(schedules.discrete(25, denoiser=respaced)[:-1],
                               respaced.sigma_table.double().flip(0))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_has_the_uniform_signature(name):
    extra = {"denoiser": _adm_denoiser()} if name == "discrete" else {}
    for n in (1, 2, 17):
        s = SCHEDULES[name](n, 0.01, 50.0, device="cpu", dtype=torch.float32, **extra)
        assert s.dtype == torch.float32 and s.shape == (n + 1,) and float(s[-1]) == 0.0
        assert bool((s[:-1] > 0).all()) and bool((s[:-1] > s[1:]).all())
        assert float(s[0]) <= 50.0 * (1 + 1e-6)


def test_schedule_options():
    assert schedule_options("karras") == ("rho",)
    assert schedule_options("exponential") == ()
    assert schedule_options("polyexponential") == ("rho",)
    assert schedule_options("vp") == ("beta_d", "beta_min")
    assert schedule_options("discrete") == ("denoiser", "sigma_table")


@pytest.mark.parametrize("name,args,kwargs,match", [
    ("karras", (0, 0.002, 80.0), {}, r"n \(the number of steps\) must be an integer >= 1, got 0"),
    ("karras", (2.5, 0.002, 80.0), {}, "n .* must be an integer"),
    ("exponential", (True, 0.002, 80.0), {}, "n .* must be an integer"),
    ("karras", (10, 0.0, 80.0), {}, r"sigma_min must be a finite number in \(0, ∞\), got 0.0"),
    ("exponential", (10, -1.0, 80.0), {}, "sigma_min must be a finite number in"),
    ("polyexponential", (10, float("nan"), 80.0), {}, "sigma_min must be"),
    ("vp", (10, 0.01, float("inf")), {}, "sigma_max must be a finite number in"),
    ("karras", (10, 5.0, 1.0), {}, r"sigma_min \(5\) must be below sigma_max \(1\)"),
    ("exponential", (10, 1.0, 1.0), {}, "sigma_min .* must be below sigma_max"),
    ("karras", (10, 0.002, 80.0), {"rho": 0}, r"rho must be a finite number in \(0, ∞\), got 0"),
    ("karras", (10, 0.002, 80.0), {"rho": -7.0}, "rho must be a finite number in"),
    ("polyexponential", (10, 0.002, 80.0), {"rho": float("nan")}, "rho must be"),
    ("vp", (10,), {"beta_d": 0.0}, "beta_d must be a finite number in"),
    ("vp", (10,), {"beta_min": -0.1}, r"beta_min must be a finite number in \[0, ∞\)"),
    ("discrete", (10,), {}, "exactly one of denoiser .* and sigma_table"),
    ("discrete", (10,), {"denoiser": lambda x, s: x}, "has no discrete σ table"),
    ("discrete", (10,), {"sigma_table": [1.0, 2.0, float("nan")]}, "sigma_table must be"),
    ("discrete", (5,), {"sigma_table": [0.5, 1.0, 2.0]}, "n = 5 steps, but the model has only 3"),
    ("discrete", (2, 3.0, 1.0), {"sigma_table": [0.5, 1.0, 2.0]}, "sigma_min .* below sigma_max"),
])
def test_bad_arguments_name_the_argument(name, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCHEDULES[name](*args, **kwargs)


def test_unknown_schedule_name():
    with pytest.raises(UnknownNameError, match=r"unknown schedule 'cosine'; choose from \["):
        SCHEDULES["cosine"]
    with pytest.raises(KeyError):
        schedule_options("linear")
