"""The two full classifier-guided sampling loops of diffusion.npz, replayed with the recorded
per-step noise: p_sample_loop (linear, "25") and ddim_sample_loop (cosine, "ddim10", η = 0),
with the real classifier as cond_fn at scale 3 (scripts/classifier_sample.py's cond_fn)."""

import numpy as np
import pytest
import torch

from conftest import load_reference_model
from fastguide.diffusion import create_gaussian_diffusion
from fastguide.sampling import classifier_cond_fn

LOOPS = [("linear", "25", "p_sample_loop"), ("cosine", "ddim10", "ddim_sample_loop")]


@pytest.fixture(scope="module")
def models(reference_dir, ref):
    return (load_reference_model(reference_dir, "unet_cond_ss.pt", str(ref["model_config"])),
            load_reference_model(reference_dir, "classifier.pt", str(ref["classifier_config"])))


@pytest.mark.parametrize("fused", [True, False], ids=["fused-step", "torch-step"])
@pytest.mark.parametrize("schedule,respacing,loop", LOOPS)
def test_guided_loop_matches_reference(ref, models, schedule, respacing, loop, fused):
    model, classifier = models
    p = f"loop__{schedule}__{respacing}__{loop}_guided__"
    d = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule=schedule,
                                  timestep_respacing=respacing)
    recorded = iter(torch.from_numpy(ref[p + "step_noise"]))
    cond_fn = classifier_cond_fn(classifier, float(ref["loop_classifier_scale"]))
    seen = []

    def cond_fn_spy(x, t, y=None):
        seen.append(t)
        return cond_fn(x, t, y=y)

    progressive = getattr(d, loop + "_progressive")
    outs = list(progressive(model, (4, 3, 32, 32), noise=torch.from_numpy(ref["loop_x_T"]),
                            cond_fn=cond_fn_spy, model_kwargs={"y": torch.from_numpy(ref["y"])},
                            randn_like=lambda x: next(recorded), fused=fused))
    assert len(outs) == d.num_timesteps
    assert next(recorded, None) is None  # one noise draw per step, as ADM
    assert int(seen[0][0]) == int(d.timestep_map[-1])  # the classifier sees original timesteps
    samples = torch.stack([o["sample"] for o in outs]).numpy()
    pred_xstarts = torch.stack([o["pred_xstart"] for o in outs]).numpy()
    np.testing.assert_allclose(samples, ref[p + "samples"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(pred_xstarts, ref[p + "pred_xstarts"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(outs[-1]["sample"].numpy(), ref[p + "final"], atol=1e-3, rtol=0)


def test_classifier_cond_fn_freezes_and_restores(ref, models):
    _, classifier = models
    params = list(classifier.parameters())
    for q in params:
        q.requires_grad_(True)
    cond_fn = classifier_cond_fn(classifier, 3.0)
    x = torch.from_numpy(ref["x_t"])
    grad = cond_fn(x, torch.tensor([0, 42, 500, 999]), y=torch.from_numpy(ref["y"]))
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert all(q.grad is None for q in params)  # no weight gradients were built
    assert all(q.requires_grad for q in params)  # and the flags are restored
    with pytest.raises(ValueError, match="labels"):
        cond_fn(x, torch.tensor([0, 42, 500, 999]))


def test_real_network_same_images_at_batch_size_1_and_7(models):
    # Per-image generators (EDM's scheme) through the real UNet seen as an EDM denoiser.
    from fastguide.diffusion import ADMDenoiser, edm_sigmas
    from fastguide.sampling import StackedRandomGenerator, sample_ddpm

    model, _ = models
    d = create_gaussian_diffusion(learn_sigma=True, noise_schedule="cosine")
    denoiser = ADMDenoiser(model, d)
    sigmas = edm_sigmas(2, 0.5, 20.0, round_sigma=denoiser.round_sigma)
    seeds = list(range(7))

    def run(batch):
        rng = StackedRandomGenerator(batch)
        x = rng.randn((len(batch), 3, 32, 32)) * sigmas[0]
        y = torch.tensor(batch) % 10
        with torch.no_grad():
            return sample_ddpm(denoiser, x, sigmas, extra_args={"y": y},
                               randn_like=rng.randn_like, disable=True)

    together = run(seeds)
    alone = torch.cat([run([s]) for s in seeds])
    # The noise is bit-identical (see test_sampling_samplers); the fp32 network is not quite
    # batch-invariant (conv algorithms), and D = x − σ·ε multiplies that by σ = 20.
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=3e-4)
