"""Guidance variants against their formulas, and their composition with every sampler:
the guidance interval, w(σ) schedules, CFG rescale, dynamic thresholding, autoguidance and
guidance through the network by a function of x₀."""
import math

import numpy as np
import pytest
import torch

from fastguide.pipeline import ADMPipeline, GuidedSampler, sampler_names
from fastguide.sampling import ClassifierFreeGuidance
from fastguide.sampling.autoguidance import AutoGuidance
from fastguide.sampling.guidance_scale import GuidanceScale
from fastguide.sampling.thresholding import DynamicThreshold
from fastguide.sampling.x0_guidance import X0Guidance, x0_cond_fn


# ---- w(σ) ------------------------------------------------------------------------------------

def test_guidance_scale_interval_and_ramps():
    sigma = torch.tensor([0.01, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)
    assert torch.equal(GuidanceScale(2.0)(sigma), torch.full_like(sigma, 2.0))
    w = GuidanceScale(2.0, interval=(0.5, 3.0))(sigma)
    assert w.tolist() == [0.0, 2.0, 2.0, 2.0, 0.0]  # inclusive ends
    # Each named ramp averages to w over u (log σ uniform on [σ_min, σ_max]).
    lo, hi = 0.01, 80.0
    u = torch.linspace(0, 1, 20001, dtype=torch.float64)
    grid = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    for name in ("constant", "linear", "linear_down", "cosine"):
        values = GuidanceScale(3.0, name, sigma_range=(lo, hi))(grid)
        assert abs(torch.trapezoid(values, u).item() - 3.0) < 1e-6, name
    linear = GuidanceScale(3.0, "linear", sigma_range=(lo, hi))
    assert linear(torch.tensor([lo, hi])).tolist() == pytest.approx([6.0, 0.0])  # rises as σ falls
    custom = GuidanceScale(2.0, lambda s: 1 / (1 + s))(torch.tensor([0.0, 1.0]))
    assert custom.tolist() == pytest.approx([2.0, 1.0])
    with pytest.raises(ValueError, match="sigma_lo <= sigma_hi"):
        GuidanceScale(1.0, interval=(5, 1))
    with pytest.raises(ValueError, match="unknown guidance schedule"):
        GuidanceScale(1.0, "zigzag", sigma_range=(lo, hi))


# ---- CFG variants on a toy network ------------------------------------------------------------

class Toy(torch.nn.Module):
    """ε(x, s, y) = x·(1 + y) + s/10: conditional and unconditional outputs differ."""

    def forward(self, x, s, y=None):
        y = y.to(x.dtype).reshape(-1, 1, 1, 1)
        return x * (1 + y) + torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1, 1, 1) / 10


def test_cfg_interval_schedule_and_rescale_against_the_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    s = torch.tensor([1.0, 5.0, 9.0], dtype=torch.float64)  # here σ = s (sigma_of is identity)
    y = torch.tensor([1, 2, 3])
    cond, uncond = Toy()(x, s, y), Toy()(x, s, torch.full_like(y, 10))
    plain = ClassifierFreeGuidance(Toy(), 2.0, null_label=10)(x, s, y=y)
    torch.testing.assert_close(plain, 3.0 * cond - 2.0 * uncond)
    interval = ClassifierFreeGuidance(Toy(), GuidanceScale(2.0, interval=(4.0, 6.0)),
                                      null_label=10)(x, s, y=y)
    torch.testing.assert_close(interval[[0, 2]], cond[[0, 2]])  # outside: the conditional model
    torch.testing.assert_close(interval[1], plain[1])
    rescaled = ClassifierFreeGuidance(Toy(), 2.0, null_label=10, rescale=0.7)(x, s, y=y)
    dims = (1, 2, 3)
    ratio = cond.std(dim=dims, keepdim=True) / plain.std(dim=dims, keepdim=True)
    torch.testing.assert_close(rescaled, 0.7 * plain * ratio + 0.3 * plain)
    full = ClassifierFreeGuidance(Toy(), 2.0, null_label=10, rescale=1.0)(x, s, y=y)
    torch.testing.assert_close(full.std(dim=dims), cond.std(dim=dims))
    assert not ClassifierFreeGuidance(Toy(), GuidanceScale(2.0, interval=(4.0, 6.0)),
                                      null_label=10).fusable
    assert ClassifierFreeGuidance(Toy(), 2.0, null_label=10).fusable


def test_autoguidance_formula_and_nesting_with_cfg():
    torch.manual_seed(1)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    s = torch.tensor([2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([1, 4])

    class Weak(Toy):
        def forward(self, x, s, y=None):
            return 0.5 * super().forward(x, s, y)
    strong, weak = Toy()(x, s, y), Weak()(x, s, y)
    torch.testing.assert_close(AutoGuidance(Toy(), Weak(), 1.5)(x, s, y=y),
                               strong + 1.5 * (strong - weak))
    cfg = ClassifierFreeGuidance(Toy(), 2.0, null_label=10)
    both = AutoGuidance(cfg, Weak(), 1.5)(x, s, y=y)
    torch.testing.assert_close(both, cfg(x, s, y=y) + 1.5 * (cfg(x, s, y=y) - weak))


class Counting(Toy):
    """Toy that records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, s, y=None):
        self.calls.append(x.shape[0])
        return super().forward(x, s, y)


def test_outside_the_interval_the_guidance_network_is_not_run():
    """CFG runs the conditional half alone and autoguidance skips the weak model when every σ of
    the batch is outside the interval, with the outputs the formulas give (w = 0)."""
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([1, 4])
    scale = GuidanceScale(2.0, interval=(4.0, 6.0))
    for s, guided in ((torch.tensor([1.0, 9.0]), False), (torch.tensor([1.0, 5.0]), True)):
        net = Counting()
        out = ClassifierFreeGuidance(net, scale, null_label=10)(x, s, y=y)
        assert net.calls == ([4] if guided else [2])
        if not guided:
            torch.testing.assert_close(out, Toy()(x, s, y))
        strong, weak = Counting(), Counting()
        out = AutoGuidance(strong, weak, scale)(x, s, y=y)
        assert strong.calls == [2] and weak.calls == ([2] if guided else [])
        if not guided:
            torch.testing.assert_close(out, Toy()(x, s, y))
    assert not scale.off(2.0) and not GuidanceScale(2.0).off(torch.zeros(2))


def test_dynamic_threshold_against_imagen():
    x0 = torch.tensor([[0.5, -0.2, 0.9, 0.1], [3.0, -2.0, 1.5, 0.0]]).reshape(2, 1, 2, 2)
    out = DynamicThreshold(0.75)(x0)
    # Image 0: every |x0| <= 1, so s = 1 and nothing changes.
    torch.testing.assert_close(out[0], x0[0])
    # Image 1: s = the 75th percentile of |x0| = (0, 1.5, 2, 3) -> 2.25 (linear interpolation).
    s = float(np.quantile([3.0, 2.0, 1.5, 0.0], 0.75))
    expected = np.clip([3.0, -2.0, 1.5, 0.0], -s, s) / s
    np.testing.assert_allclose(out[1].flatten().numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DynamicThreshold(0.0)


# ---- guidance through the network ------------------------------------------------------------

MU, S2 = 0.3, 0.25


class Gaussian(torch.nn.Module):
    """The exact denoiser of N(μ, s²) data: D(x, σ) = μ + (x − μ)·s²/(s² + σ²)."""

    def forward(self, x, sigma, **kwargs):
        column = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return MU + (x - MU) * S2 / (S2 + column ** 2)


def test_x0_guidance_gradient_through_the_denoiser():
    torch.manual_seed(2)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    target = torch.full_like(x, -0.4)

    def fn(x0, sigma, **kw):  # log-likelihood of a measurement of x0
        return -0.5 * ((x0 - target) ** 2).flatten(1).sum(1)
    d = Gaussian()(x, sigma)
    column = sigma.reshape(-1, 1, 1, 1)
    through = X0Guidance(Gaussian(), fn, scale=2.0)(x, sigma)
    # ∇_x f(D(x)) = −(D − target)·∂D/∂x, ∂D/∂x = s²/(s² + σ²)
    expected = d + column ** 2 * 2.0 * (-(d - target) * S2 / (S2 + column ** 2))
    torch.testing.assert_close(through, expected)
    approx = X0Guidance(Gaussian(), fn, scale=2.0, through_denoiser=False)(x, sigma)
    torch.testing.assert_close(approx, d + column ** 2 * 2.0 * (-(d - target)))
    # The discrete form: ∇ with respect to x_t = x/√(1 + σ²).
    cond_fn = x0_cond_fn(fn, Gaussian(), lambda t: t, scale=2.0)
    x_t = x / (1 + column ** 2).sqrt()
    torch.testing.assert_close(cond_fn(x_t, sigma),
                               2.0 * (1 + column ** 2).sqrt() * (-(d - target)) * S2
                               / (S2 + column ** 2))


# ---- every guidance kind with every sampler, on the shipped digits model ----------------------

@pytest.fixture(scope="module")
def pipe():
    import fastguide
    return ADMPipeline.from_checkpoint("digits_unet", classifier="digits_classifier",
                                       weak_model="digits_unet_weak")


GUIDANCE = {"cfg": dict(cfg_scale=2.0), "classifier": dict(classifier_scale=3.0),
            "autoguidance": dict(autoguidance_scale=1.0)}
NONE = dict(cfg_scale=0.0, classifier_scale=0.0, autoguidance_scale=0.0)


def _run(pipe, sampler, **options):
    steps = 2 if sampler not in ("ddpm", "ddim") else 3
    return pipe(seeds=[0, 7], sampler=sampler, steps=steps, progress=False,
                **{**NONE, **options}).images


@pytest.mark.parametrize("sampler", ["ddpm", "heun"])
def test_outside_the_interval_the_classifier_is_not_run(pipe, sampler):
    calls = []
    hook = pipe.classifier.register_forward_hook(lambda *args: calls.append(1))
    try:
        _run(pipe, sampler, classifier_scale=3.0, guidance_interval=(1e9, 2e9))
        assert calls == []
        _run(pipe, sampler, classifier_scale=3.0, guidance_interval=(0.0, float("inf")))
        assert calls
    finally:
        hook.remove()


def assert_same_images(a, b, what):
    """Equal up to float rounding: the interval path combines as c + w·(c − u) in PyTorch while
    plain CFG may run (1 + w)·c − w·u in the fused kernel, and CFG evaluates a 2B batch."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() >= 0.95, (what, diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler"])  # both families of samplers
def test_guidance_interval_switches_each_kind_on_and_off(pipe, sampler):
    """An interval that holds every σ of the run is plain guidance; one that holds none is no
    guidance, for CFG, classifier guidance and autoguidance alike. (The guidance wrappers do
    not depend on the sampler beyond its family: the σ-samplers all call the same denoiser.)"""
    unguided = _run(pipe, sampler)
    for kind, options in GUIDANCE.items():
        guided = _run(pipe, sampler, **options)
        assert np.abs(guided.astype(int) - unguided.astype(int)).max() > 10, kind
        everywhere = _run(pipe, sampler, guidance_interval=(0.0, float("inf")), **options)
        nowhere = _run(pipe, sampler, guidance_interval=(1e9, 2e9), **options)
        assert_same_images(everywhere, guided, (kind, "everywhere"))
        assert_same_images(nowhere, unguided, (kind, "nowhere"))


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_guidance_kind_runs_with_every_sampler(pipe, sampler):
    all_kinds = dict(cfg_scale=2.0, classifier_scale=2.0, autoguidance_scale=0.5,
                     guidance_interval=(0.05, 50.0), cfg_rescale=0.5, dynamic_threshold=0.99)
    guided, unguided = _run(pipe, sampler, **all_kinds), _run(pipe, sampler)
    assert guided.shape == (2, 8, 8, 1) and guided.std() > 10
    assert np.abs(guided.astype(int) - unguided.astype(int)).max() > 10


def test_variants_compose(pipe):
    base = _run(pipe, "euler", cfg_scale=2.0)
    combos = [dict(cfg_rescale=0.7), dict(dynamic_threshold=0.9), dict(guidance_schedule="linear"),
              dict(classifier_scale=2.0), dict(autoguidance_scale=0.5)]
    for extra in combos:
        images = _run(pipe, "euler", cfg_scale=2.0, **extra)
        assert images.shape == base.shape and not np.array_equal(images, base), extra


def test_x0_guidance_pulls_samples_towards_a_target(pipe):
    """DPS-style: f(x0) = −‖x0 − bright‖²; the guided images are brighter, on both families."""
    def brighter(x0, sigma, **kw):
        return -((x0 - 1.0) ** 2).flatten(1).sum(1)
    for sampler in ("ddim", "euler"):
        plain = _run(pipe, sampler).astype(float).mean()
        pulled = _run(pipe, sampler, x0_guidance=brighter, x0_guidance_scale=0.5)
        assert pulled.astype(float).mean() > plain + 10, sampler


def test_guided_sampler_option_errors(pipe):
    model = pipe.model
    d = pipe.diffusion
    for kwargs, match in [
        (dict(guidance_interval=(3.0, 1.0)), "guidance_interval"),
        (dict(guidance_schedule="zigzag"), "guidance_schedule must be one of"),
        (dict(cfg_scale=-1.0), "cfg_scale must be a finite number >= 0"),
        (dict(autoguidance_scale=float("nan")), "autoguidance_scale"),
        (dict(dynamic_threshold=1.5), r"dynamic_threshold must be a percentile in \(0, 1\]"),
        (dict(autoguidance_scale=1.0), "needs a weak model"),
        (dict(x0_guidance="not callable"), "x0_guidance must be a callable"),
    ]:
        with pytest.raises(ValueError, match=match):
            GuidedSampler(model, d, "ddim", 5, **kwargs)
