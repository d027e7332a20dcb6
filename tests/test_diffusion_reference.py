"""The discrete process with the real ADM network (unet_cond_ss) against guided-diffusion's
recorded single steps, for all 6 schedule × respacing prefixes of diffusion.npz: p_mean_variance,
condition_mean / condition_score (and the timesteps the cond_fn receives), ddim_sample at η = 0
and 0.5, p_sample with and without cond_fn (all with the recorded noise), training_losses."""

import numpy as np
import pytest
import torch

from conftest import load_reference_model
from fastguide.diffusion import create_gaussian_diffusion

PREFIXES = [(s, r) for s in ("linear", "cosine") for r in ("full", "25", "ddim10")]


@pytest.fixture(scope="module")
def model(reference_dir, ref):
    return load_reference_model(reference_dir, "unet_cond_ss.pt", str(ref["model_config"]))


def tensor(ref, key):
    return torch.from_numpy(np.asarray(ref[key]))


def close(actual, ref, key, rtol=2e-5, atol=2e-5, mismatch=0.0):
    """Compare to ref[key]; `mismatch` is the fraction of elements allowed to differ (x_0 values
    at the clip edge can flip to ±1)."""
    expected = np.asarray(ref[key])
    actual = actual.detach().cpu().numpy()
    scale = max(float(np.abs(expected).max()), 1e-12)
    bad = np.abs(actual - expected) > atol * scale + rtol * np.abs(expected)
    assert bad.mean() <= mismatch, (key, float(np.abs(actual - expected).max()), int(bad.sum()))


def make(schedule, respacing, **kwargs):
    return create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule=schedule,
                                     timestep_respacing="" if respacing == "full" else respacing,
                                     **kwargs)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-step", "torch-step"])
@pytest.mark.parametrize("schedule,respacing", PREFIXES)
def test_single_steps_match_reference(ref, model, schedule, respacing, fused):
    p = f"{schedule}__{respacing}__"
    d = make(schedule, respacing)
    x_t, t = tensor(ref, "x_t"), tensor(ref, p + "t")
    kwargs = {"y": tensor(ref, "y")}
    grad = tensor(ref, "cond_grad") * float(ref["cond_scale"])
    received = []

    def cond_fn(x, ts, y=None):
        assert y is not None
        received.append(ts)
        return grad

    def fixed_noise(x):
        return tensor(ref, "fixed_noise")

    edge = 0.002  # fraction of clipped x_0 values allowed to sit on the other side of ±1
    with torch.no_grad():
        out = d.p_mean_variance(model, x_t, t, clip_denoised=True, model_kwargs=kwargs)
        for key in ("mean", "variance", "log_variance"):
            close(out[key], ref, p + "pmv_" + key)
        close(out["pred_xstart"], ref, p + "pmv_pred_xstart", mismatch=edge)
        noclip = d.p_mean_variance(model, x_t, t, clip_denoised=False, model_kwargs=kwargs)
        close(noclip["mean"], ref, p + "pmv_noclip_mean")
        close(noclip["pred_xstart"], ref, p + "pmv_noclip_pred_xstart")

        close(d.condition_mean(cond_fn, out, x_t, t, model_kwargs=kwargs), ref, p + "cond_mean")
        np.testing.assert_array_equal(received[-1].numpy(), ref[p + "cond_fn_t_received"])
        score = d.condition_score(cond_fn, out, x_t, t, model_kwargs=kwargs)
        close(score["mean"], ref, p + "cond_score_mean")
        close(score["pred_xstart"], ref, p + "cond_score_pred_xstart")

        for eta, name in [(0.0, "ddim_eta0"), (0.5, "ddim_eta05")]:
            s = d.ddim_sample(model, x_t, t, model_kwargs=kwargs, eta=eta, randn_like=fixed_noise, fused=fused)
            close(s["sample"], ref, p + name + "_sample")
            close(s["pred_xstart"], ref, p + name + "_pred_xstart", mismatch=edge)
        s = d.ddim_sample(model, x_t, t, model_kwargs=kwargs, eta=0.5, cond_fn=cond_fn,
                          randn_like=fixed_noise, fused=fused)
        close(s["sample"], ref, p + "ddim_eta05_cond_sample")
        close(s["pred_xstart"], ref, p + "ddim_eta05_cond_pred_xstart")
        s = d.p_sample(model, x_t, t, model_kwargs=kwargs, randn_like=fixed_noise, fused=fused)
        close(s["sample"], ref, p + "psample_sample")
        s = d.p_sample(model, x_t, t, model_kwargs=kwargs, cond_fn=cond_fn, randn_like=fixed_noise, fused=fused)
        close(s["sample"], ref, p + "psample_cond_sample")
        np.testing.assert_array_equal(received[-1].numpy(), ref[p + "cond_fn_t_received"])


@pytest.mark.parametrize("schedule,respacing", PREFIXES)
def test_training_losses_match_reference(ref, model, schedule, respacing):
    p = f"{schedule}__{respacing}__"
    x_start, noise, t = tensor(ref, "x_start"), tensor(ref, "train_noise"), tensor(ref, p + "t")
    kwargs = {"y": tensor(ref, "y")}
    for rescaled, tag in [(False, "train_"), (True, "train_rescaled_")]:
        d = make(schedule, respacing, rescale_learned_sigmas=rescaled)
        with torch.no_grad():
            losses = d.training_losses(model, x_start, t, model_kwargs=kwargs, noise=noise)
        for key in ("mse", "vb", "loss"):
            # Relative: the cosine schedule's last vb terms are ~1e3 and ~1e6 (README).
            np.testing.assert_allclose(losses[key].numpy(), ref[p + tag + key], rtol=2e-5,
                                       err_msg=p + tag + key)


def test_training_losses_backpropagate(ref, model):
    d = make("cosine", "25")
    x_start = tensor(ref, "x_start")[:2]
    loss = d.training_losses(model, x_start, torch.tensor([3, 20]),
                             model_kwargs={"y": tensor(ref, "y")[:2]})["loss"].mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)
