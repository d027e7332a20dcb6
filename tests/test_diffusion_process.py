"""The discrete process without a network: schedules and respacing against guided-diffusion's
recorded arrays, parameterisation round trips, losses' building blocks, timestep samplers, and
the errors bad input must raise."""
import math

import numpy as np
import pytest
import torch

from fastguide.diffusion import (GaussianDiffusion, LossSecondMomentResampler, LossType,
                                 ModelMeanType, ModelVarType, UniformSampler,
                                 create_gaussian_diffusion, discretized_gaussian_log_likelihood,
                                 named_betas, normal_kl, space_timesteps)

PREFIXES = [(s, r) for s in ("linear", "cosine") for r in ("full", "25", "ddim10")]
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped")


@pytest.fixture(scope="module")
def ref(reference_dir):
    return np.load(reference_dir / "diffusion.npz")


def make(schedule, respacing, **kwargs):
    return create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule=schedule,
                                     timestep_respacing="" if respacing == "full" else respacing,
                                     **kwargs)


@pytest.mark.parametrize("schedule,respacing", PREFIXES)
def test_schedules_match_reference(ref, schedule, respacing):
    prefix = f"{schedule}__{respacing}__"
    d = make(schedule, respacing)
    for key in SCHEDULE_KEYS:
        expected = ref[prefix + key]
        np.testing.assert_allclose(getattr(d, key).numpy(), expected, rtol=1e-13, atol=1e-16,
                                   err_msg=key)
    np.testing.assert_array_equal(d.timestep_map.numpy(), ref[prefix + "timestep_map"])
    assert d.model_var_type == ModelVarType.LEARNED_RANGE
    assert d.model_mean_type == ModelMeanType.EPSILON
    assert f"LossType.{d.loss_type.name}" == str(ref[prefix + "loss_type"])
    assert f"LossType.{make(schedule, respacing, rescale_learned_sigmas=True).loss_type.name}" \
        == str(ref[prefix + "train_rescaled_loss_type"])


@pytest.mark.parametrize("schedule,respacing", PREFIXES)
def test_q_sample_matches_reference(ref, schedule, respacing):
    prefix = f"{schedule}__{respacing}__"
    d = make(schedule, respacing)
    out = d.q_sample(torch.from_numpy(ref["x_start"]), torch.from_numpy(ref[prefix + "t"]),
                     noise=torch.from_numpy(ref["train_noise"]))
    np.testing.assert_allclose(out.numpy(), ref[prefix + "qsample"], rtol=1e-6, atol=1e-6)


def test_respacing_rounding_is_adms():
    steps = space_timesteps(1000, "25")
    assert len(steps) == 25 and steps[0] == 0 and steps[-1] == 999
    assert 166 in steps and 167 not in steps  # 166.5 rounds half to even
    assert 832 in steps and 833 not in steps
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    # Sections: 1000 = 334 + 333 + 333, with 1, 2 and 3 steps.
    assert space_timesteps(1000, "1,2,3") == [0, 334, 666, 667, 833, 999]
    assert space_timesteps(100, "") == list(range(100))
    assert space_timesteps(10, [10]) == list(range(10))


def test_cosine_respaced_betas_exceed_cap():
    d = make("cosine", "25")
    assert float(d.betas[-1]) > 0.999  # recomputed from ᾱ, as in ADM
    full = named_betas("cosine", 1000)
    assert float(full.max()) == pytest.approx(0.999)


@pytest.mark.parametrize("spec", ["abc", "ddimx", "10,a", "0", "ddim0", "-5", "10,,3", "ddim999"])
def test_invalid_respacing_string(spec):
    with pytest.raises(ValueError, match="respacing"):
        space_timesteps(1000, spec)


@pytest.mark.parametrize("spec", ["2000", "ddim1001", "600,600"])
def test_more_steps_than_T(spec):
    with pytest.raises(ValueError, match="respacing"):
        create_gaussian_diffusion(steps=1000, timestep_respacing=spec)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="noise schedule"):
        create_gaussian_diffusion(noise_schedule="quadratic")


def test_model_timesteps_mapping_and_rescale():
    d = create_gaussian_diffusion(timestep_respacing="25", rescale_timesteps=True)
    t = torch.tensor([0, 1, 24])
    assert d.model_timesteps(t).tolist() == [0.0, 42.0, 999.0]
    d = create_gaussian_diffusion(steps=500, timestep_respacing="ddim5", rescale_timesteps=True)
    assert d.model_timesteps(torch.tensor([1])).tolist() == [200.0]  # 100 * 1000/500


@pytest.mark.parametrize("mean_type", [m for m in ModelMeanType if m != ModelMeanType.PREVIOUS_X])
def test_parameterisations_round_trip(mean_type):
    d = GaussianDiffusion.from_schedule("cosine", 100, "10", model_mean_type=mean_type,
                                        model_var_type=ModelVarType.FIXED_LARGE)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 4, 8])  # not the last step, where 1/√ᾱ amplifies fp32 rounding
    x_t = d.q_sample(x0, t, eps)
    target = {ModelMeanType.EPSILON: eps, ModelMeanType.START_X: x0,
              ModelMeanType.V: d.predict_v(x0, t, eps)}[mean_type]
    out = d.p_mean_variance(lambda x, ts: target, x_t, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x0, rtol=1e-4, atol=2e-4)
    mean, _, _ = d.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(out["mean"], mean, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(out["variance"][:, 0, 0, 0], d.fixed_large_variance[t].float())


def test_posterior_is_gaussian_conditioning():
    # q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): check the variance formula.
    d = GaussianDiffusion.from_schedule("linear", 50)
    a = 1 - d.betas
    ab_prev = d.alphas_cumprod_prev
    var = 1 / (a / d.betas + 1 / (1 - ab_prev))
    torch.testing.assert_close(d.posterior_variance[1:], var[1:])


def test_normal_kl_closed_form():
    m1, m2 = torch.tensor([0.3]), torch.tensor([-0.2])
    lv1, lv2 = torch.tensor([math.log(0.5)]), torch.tensor([math.log(2.0)])
    expected = math.log(2.0 / 0.5) / 2 + (0.5 + 0.25) / (2 * 2.0) - 0.5
    assert float(normal_kl(m1, lv1, m2, lv2)) == pytest.approx(expected, rel=1e-6)
    assert float(normal_kl(m1, lv1, m1, lv1)) == 0.0


def test_discretized_likelihood_is_a_distribution():
    # The 256 bins of [-1, 1] carry all the probability mass, edges included.
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.1, -2.0), (-0.95, -3.0), (0.999, -1.0)]:
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean),
                                                   torch.full_like(grid, log_scale))
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=2e-3)


def test_kl_losses_are_the_bound():
    d = GaussianDiffusion.from_schedule("linear", 100, "10",
                                        model_var_type=ModelVarType.LEARNED_RANGE)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 256, (4, 3, 4, 4), generator=g).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g)
    out = torch.randn(4, 6, 4, 4, generator=g)
    t = torch.tensor([0, 3, 6, 9])

    def model(x, ts):
        return out

    hybrid = d.training_losses(model, x0, t, noise=noise)
    for loss_type, factor in [(LossType.KL, 1.0), (LossType.RESCALED_KL, 10.0)]:
        d.loss_type = loss_type
        kl = d.training_losses(model, x0, t, noise=noise)
        torch.testing.assert_close(kl["loss"], hybrid["vb"] * factor)
    assert float(hybrid["vb"][0]) > 0 and bool((hybrid["vb"] >= -1e-6).all())


def test_simple_mse_loss_without_learned_variance():
    d = create_gaussian_diffusion(timestep_respacing="10", predict_xstart=True)
    x0 = torch.zeros(2, 1, 2, 2)
    losses = d.training_losses(lambda x, ts: torch.ones_like(x), x0, torch.tensor([0, 5]))
    assert set(losses) == {"mse", "loss"}
    torch.testing.assert_close(losses["loss"], torch.ones(2))


def test_model_output_of_wrong_shape():
    d = make("linear", "10")
    x = torch.zeros(2, 3, 4, 4)
    expected = r"model output has shape \[2, 3, 4, 4\], expected \[2, 6, 4, 4\]"
    with pytest.raises(ValueError, match=expected):
        d.p_mean_variance(lambda x, t: x, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one timestep per sample"):
        d.p_mean_variance(lambda x, t: x, x, torch.tensor(1))


def test_uniform_sampler_weights():
    d = make("linear", "25")
    idx, w = UniformSampler(d).sample(64, "cpu", generator=torch.Generator().manual_seed(0))
    assert idx.min() >= 0 and idx.max() < 25 and bool((w == 1).all())


def test_loss_second_moment_resampler():
    d = make("linear", "ddim10")
    sampler = LossSecondMomentResampler(d, history_per_term=2, uniform_prob=0.0)
    assert bool((sampler.weights() == 1).all())  # uniform until warmed up
    ts = torch.arange(10).repeat(3)
    losses = (ts + 1).double()  # second moment of L_t is (t+1)²
    sampler.update_with_local_losses(ts, losses)
    assert sampler.warmed_up()
    p = sampler.weights() / sampler.weights().sum()
    torch.testing.assert_close(p, (torch.arange(10) + 1).double() / 55)
    idx, w = sampler.sample(20000, "cpu", generator=torch.Generator().manual_seed(0))
    assert float(w.mean()) == pytest.approx(1.0, rel=0.05)  # E[1/(T p_t)] = 1: unbiased
