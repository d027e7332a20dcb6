"""The variational bound in bits/dim (calc_bpd_loop): its terms against guided-diffusion's
training_losses vb at the recorded (x_start, noise, t), and the prior term against the closed
form KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1))."""
import math

import numpy as np
import pytest
import torch

from conftest import load_reference_model
from fastguide.diffusion import create_gaussian_diffusion, prior_bpd


@pytest.fixture(scope="module")
def model(reference_dir, ref):
    return load_reference_model(reference_dir, "unet_cond_ss.pt", str(ref["model_config"]))


@pytest.mark.parametrize("schedule,respacing", [("linear", "ddim10"), ("cosine", "25")])
def test_bpd_terms_match_guided_diffusion_vb(ref, model, schedule, respacing):
    d = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule=schedule,
                                  timestep_respacing=respacing)
    x_start, noise = torch.from_numpy(ref["x_start"]), torch.from_numpy(ref["train_noise"])
    draws = []

    def same_noise(x):
        draws.append(1)
        return noise

    out = d.calc_bpd_loop(model, x_start, clip_denoised=False,
                          model_kwargs={"y": torch.from_numpy(ref["y"])}, randn_like=same_noise)
    assert len(draws) == d.num_timesteps and out["vb"].shape == (4, d.num_timesteps)
    # Reference: sample i at spaced step t_i, vb NOT rescaled (LossType.MSE), same x_t.
    p = f"{schedule}__{respacing}__"
    t = ref[p + "t"]
    vb = out["vb"][torch.arange(4), torch.from_numpy(t)].numpy()
    np.testing.assert_allclose(vb, ref[p + "train_vb"], rtol=2e-4)
    mse = out["mse"][torch.arange(4), torch.from_numpy(t)].numpy()
    np.testing.assert_allclose(mse, ref[p + "train_mse"], rtol=2e-4)
    torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert torch.isfinite(out["total_bpd"]).all()


def test_prior_bpd_closed_form():
    d = create_gaussian_diffusion(steps=1000, noise_schedule="linear")
    x0 = torch.linspace(-1, 1, 2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    a = float(d.alphas_cumprod[-1])
    # KL(N(m, v) ‖ N(0, 1)) = ½(v + m² − 1 − ln v), per dimension, in bits.
    m, v = math.sqrt(a) * x0, 1 - a
    expected = (0.5 * (v + m ** 2 - 1 - math.log(v))).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(prior_bpd(d, x0).double(), expected, rtol=1e-5, atol=1e-9)
    assert float(prior_bpd(d, x0).max()) < 1e-4  # ᾱ_T ≈ 4e-5: x_T is almost pure noise
