"""Guidance on a 2-D Gaussian mixture whose conditional and unconditional denoisers (hence
scores, and the noisy classifier's gradient) are known in closed form, plus the guidance of the
real ADM networks in σ-space against the discrete DDIM score shift."""
import json
import math

import numpy as np
import pytest
import torch

import fastguide
from fastguide.diffusion import ADMDenoiser, create_gaussian_diffusion, edm_sigmas
from fastguide.sampling import (SAMPLERS, ADMClassifierGrad, ClassifierFreeGuidance,
                                ClassifierGuidedDenoiser, classifier_log_prob_grad, frozen,
                                p_sample_loop, sample_heun, sampler_options, without_labels)

NUM_CLASSES, NULL, SPREAD = 3, 3, 0.6
MEANS = torch.tensor([[math.cos(2 * math.pi * c / 3), math.sin(2 * math.pi * c / 3)]
                      for c in range(NUM_CLASSES)], dtype=torch.float64)


def _column(sigma, x):
    return sigma.reshape(-1, 1).to(x.dtype)


def _class_denoisers(x, sigma):
    """[B, classes, 2]: E[y | x, class c] for every class."""
    c = _column(sigma, x)[:, None]
    return MEANS + SPREAD ** 2 / (SPREAD ** 2 + c ** 2) * (x[:, None] - MEANS)


def _class_posterior(x, sigma):
    """p(c | x; σ): the components are N(μ_c, (s² + σ²) I) with equal weights."""
    var = SPREAD ** 2 + _column(sigma, x) ** 2
    return torch.softmax(-((x[:, None] - MEANS) ** 2).sum(-1) / (2 * var), dim=1)


def unconditional(x, sigma):
    return (_class_posterior(x, sigma)[..., None] * _class_denoisers(x, sigma)).sum(1)


class MixtureDenoiser(torch.nn.Module):
    """D(x, σ, y): class-conditional for y < 3, unconditional for the null label 3."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x, sigma, y):
        self.batch_sizes.append(x.shape[0])
        cond = _class_denoisers(x, sigma)[torch.arange(len(x)), y.clamp(max=NUM_CLASSES - 1)]
        return torch.where((y == NULL)[:, None], unconditional(x, sigma), cond)


def analytic_grad(x, sigma, y):
    """∇_x log p(y | x; σ) = (D_y − D_uncond)/σ²  (Tweedie: ∇ log p(x; σ) = (D − x)/σ²)."""
    cond = _class_denoisers(x, sigma)[torch.arange(len(x)), y]
    return (cond - unconditional(x, sigma)) / _column(sigma, x) ** 2


def target_probability(x, target=0):
    return float(_class_posterior(x, torch.zeros(len(x), dtype=x.dtype))[:, target].mean())


def sample(denoiser, n=2000, steps=24, target=0, sampler=sample_heun, **kwargs):
    sigmas = edm_sigmas(steps, 0.002, 40.0)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.full((n,), target)
    return sampler(denoiser, z * sigmas[0], sigmas, extra_args={"y": y}, disable=True, **kwargs)


def test_cfg_target_probability_rises_with_w():
    probs = []
    for w in [0.0, 0.5, 1.0, 2.0, 4.0]:
        cfg = ClassifierFreeGuidance(MixtureDenoiser(), w, null_label=NULL)
        probs.append(target_probability(sample(cfg)))
    assert all(b > a for a, b in zip(probs, probs[1:])), probs
    assert probs[-1] > probs[0] + 0.1, probs


def test_cfg_is_one_forward_of_a_doubled_batch():
    model = MixtureDenoiser()
    cfg = ClassifierFreeGuidance(model, 2.0, null_label=NULL)
    x = torch.randn(5, 2, dtype=torch.float64)
    sigma, y = torch.full((5,), 1.5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    out = cfg(x, sigma, y=y)
    assert model.batch_sizes == [10]
    expected = 3 * model(x, sigma, y) - 2 * model(x, sigma, torch.full_like(y, NULL))
    torch.testing.assert_close(out, expected)
    # uncond_kwargs gives the same result as null_label.
    cfg2 = ClassifierFreeGuidance(model, 2.0, uncond_kwargs={"y": torch.full_like(y, NULL)})
    torch.testing.assert_close(cfg2(x, sigma, y=y), out)


def test_cfg_of_learned_sigma_outputs_keeps_conditional_variance():
    def model(x, t, y):
        eps = x * (y[:, None, None, None].float() + 1)
        return torch.cat([eps, torch.full_like(x, 7.0) + y[:, None, None, None]], 1)

    cfg = ClassifierFreeGuidance(model, 1.5, null_label=9)
    x = torch.randn(2, 3, 2, 2)
    out = cfg(x, torch.tensor([10, 10]), y=torch.tensor([1, 2]))
    torch.testing.assert_close(out[:, :3], 2.5 * model(x, 0, torch.tensor([1, 2]))[:, :3]
                               - 1.5 * x * 10)
    torch.testing.assert_close(out[:, 3:], model(x, 0, torch.tensor([1, 2]))[:, 3:])


def test_classifier_guidance_equals_cfg_in_closed_form():
    # D + σ²·s·∇ log p(y|x) = D_y + s·(D_y − D_u): classifier guidance of the conditional model
    # is CFG with w = s; of the unconditional model at s = 1 it is the conditional model; both
    # at once add up.
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    sigma, y = torch.full((6,), 0.8, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    base = MixtureDenoiser()
    classifier = ClassifierGuidedDenoiser(base, analytic_grad, 1.5)
    torch.testing.assert_close(classifier(x, sigma, y=y),
                               ClassifierFreeGuidance(base, 1.5, null_label=NULL)(x, sigma, y=y))

    def uncond_model(x, sigma):
        return unconditional(x, sigma)
    guided_uncond = ClassifierGuidedDenoiser(uncond_model, analytic_grad, 1.0,
                                             model_uses_labels=False)
    torch.testing.assert_close(guided_uncond(x, sigma, y=y), base(x, sigma, y))

    both = ClassifierGuidedDenoiser(ClassifierFreeGuidance(base, 1.0, null_label=NULL),
                                    analytic_grad, 2.0)
    torch.testing.assert_close(both(x, sigma, y=y),
                               ClassifierFreeGuidance(base, 3.0, null_label=NULL)(x, sigma, y=y))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_guidance_works_with_every_sampler(name):
    kwargs = {"randn_like": lambda x: torch.randn(x.shape, dtype=x.dtype)} \
        if "randn_like" in sampler_options(name) else {}
    torch.manual_seed(0)
    plain = sample(MixtureDenoiser(), n=1000, sampler=SAMPLERS[name], **kwargs)
    torch.manual_seed(0)
    guided = sample(ClassifierGuidedDenoiser(MixtureDenoiser(), analytic_grad, 3.0), n=1000,
                    sampler=SAMPLERS[name], **kwargs)
    assert target_probability(guided) > target_probability(plain) + 0.05


def test_guidance_without_labels():
    x, sigma = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="labels"):
        ClassifierGuidedDenoiser(MixtureDenoiser(), analytic_grad, 1.0)(x, sigma)
    with pytest.raises(ValueError, match="labels"):
        ClassifierFreeGuidance(MixtureDenoiser(), 1.0, null_label=NULL)(x, sigma)
    with pytest.raises(ValueError, match="labels"):
        classifier_log_prob_grad(lambda x, t: x, x, sigma, None)
    with pytest.raises(ValueError, match="labels"):
        sample(ClassifierGuidedDenoiser(MixtureDenoiser(), analytic_grad, 1.0), n=4, steps=2,
               sampler=lambda d, x, s, extra_args, disable: sample_heun(d, x, s, disable=disable))
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierFreeGuidance(MixtureDenoiser(), 1.0)


def test_frozen_restores_and_builds_no_weight_gradients():
    classifier = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    classifier[0].weight.requires_grad_(False)  # a flag set by the user stays as it was
    x = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    grad = classifier_log_prob_grad(lambda x, t: classifier(x), x, None, y)
    assert grad.shape == x.shape
    with frozen(classifier):
        assert not any(p.requires_grad for p in classifier.parameters())
    assert [p.requires_grad for p in classifier.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in classifier.parameters())


def test_discrete_guidance_of_an_unconditional_model():
    d = create_gaussian_diffusion(timestep_respacing="10")
    received = {}

    def uncond_model(x, t):
        return torch.zeros_like(x)

    def cond_fn(x, t, y=None):
        received["y"] = y
        return torch.ones_like(x)

    y = torch.tensor([1, 2])
    g = torch.Generator().manual_seed(0)
    out = p_sample_loop(d, without_labels(uncond_model), (2, 1, 2, 2), cond_fn=cond_fn,
                        model_kwargs={"y": y},
                        randn_like=lambda x: torch.randn(x.shape, generator=g))
    assert torch.equal(received["y"], y) and out.shape == (2, 1, 2, 2)


# ------------------------------------------------------------------------------------------------
# The real ADM networks: σ-space classifier guidance is DDIM's score shift in disguise.

HEAD_KEYS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")


def _load(reference_dir, name, config_json):
    config = json.loads(config_json)
    return fastguide.load_checkpoint(reference_dir / name,
                                     **{k: config[k] for k in HEAD_KEYS if k in config}).eval()


def test_adm_sigma_space_guidance_matches_condition_score(reference_dir):
    ref = np.load(reference_dir / "diffusion.npz")
    model = _load(reference_dir, "unet_cond_ss.pt", str(ref["model_config"]))
    classifier = _load(reference_dir, "classifier.pt", str(ref["classifier_config"]))
    d = create_gaussian_diffusion(learn_sigma=True, noise_schedule="cosine",
                                  timestep_respacing="25")
    x_t, y = torch.from_numpy(ref["x_t"])[:2], torch.from_numpy(ref["y"])[:2]
    t = torch.tensor([6, 17])
    scale = 3.0

    def cond_fn(x, ts, y=None):
        return classifier_log_prob_grad(classifier, x, ts, y) * scale

    with torch.no_grad():
        out = d.p_mean_variance(model, x_t, t, clip_denoised=False, model_kwargs={"y": y})
        shifted = d.condition_score(cond_fn, out, x_t, t, model_kwargs={"y": y})
        denoiser = ADMDenoiser(model, d)
        guided = ClassifierGuidedDenoiser(denoiser, ADMClassifierGrad(classifier, denoiser), scale)
        sigma = d.sigmas[t].float()
        x = x_t / d.sqrt_alphas_cumprod[t].float().reshape(-1, 1, 1, 1)  # σ-space sample
        plain, shifted_d = denoiser(x, sigma, y=y), guided(x, sigma, y=y)
    torch.testing.assert_close(plain, out["pred_xstart"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shifted_d - plain, shifted["pred_xstart"] - out["pred_xstart"],
                               rtol=1e-3, atol=1e-4)
    assert float((shifted_d - plain).abs().max()) > 1e-3  # the guidance did something
