"""The discrete samplers' fused path with the real ADM network: the same samples as the
pure-PyTorch path (also with classifier-free guidance, whose combine happens in the kernel),
no host sync after the first step, and clear errors for what it cannot do."""
import pytest
import torch

from conftest import HAS_CUDA, load_reference_model
from fastguide.diffusion import create_gaussian_diffusion
from fastguide.sampling import ClassifierFreeGuidance
from test_sampling_samplers import _NoSync

SHAPE = (2, 3, 32, 32)


@pytest.fixture(scope="module")
def model(reference_dir, ref):
    return load_reference_model(reference_dir, "unet_cond_ss.pt", str(ref["model_config"]))


def run(model, loop, fused, seed=0, **kw):
    d = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine",
                                  timestep_respacing="8")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=g)
    draws = torch.randn(d.num_timesteps, *SHAPE, generator=g)
    it = iter(draws)
    fn = getattr(d, loop)
    return fn(model, SHAPE, noise=noise, randn_like=lambda x: next(it), fused=fused, **kw)


@pytest.mark.parametrize("loop,kw", [("p_sample_loop", {}), ("ddim_sample_loop", {"eta": 0.0}),
                                     ("ddim_sample_loop", {"eta": 1.0})])
def test_fused_and_torch_paths_agree_with_cfg(model, loop, kw):
    # Classifier-free guidance: "unconditional" labels stand in for a null class here; what is
    # tested is the 2B-batch combine (1+w)*eps(z,c) - w*eps(z) inside the step kernel.
    cfg = ClassifierFreeGuidance(model, guidance_scale=1.5,
                                 uncond_kwargs={"y": torch.tensor([7, 7])})
    kwargs = {"model_kwargs": {"y": torch.tensor([1, 3])}, **kw}
    fused = run(cfg, loop, True, **kwargs)
    torch_path = run(cfg, loop, False, **kwargs)
    assert (fused - torch_path).abs().max() <= 1e-4 * torch_path.abs().max()
    assert (fused - run(model, loop, True, **kwargs)).abs().max() > 1e-2  # guidance did something


def test_no_host_sync_after_the_first_step(model):
    guard, calls = _NoSync(), []

    def watched(x, t, **kw):
        if len(calls) == 1:  # the first step may check the labels on the host; no later one
            guard.__enter__()
        calls.append(1)
        return model(x, t, **kw)
    try:
        run(watched, "p_sample_loop", True, model_kwargs={"y": torch.tensor([1, 3])})
    finally:
        guard.__exit__(None, None, None)
    assert len(calls) == 8


def test_bad_labels_still_get_a_clear_error_in_a_loop(model):
    with pytest.raises(ValueError, match="y out of range"):
        run(model, "ddim_sample_loop", True, model_kwargs={"y": torch.tensor([1, 12])})


def test_fused_true_refuses_what_it_cannot_do(model):
    with pytest.raises(ValueError, match="the fused step does not support a denoised_fn"):
        run(model, "p_sample_loop", True, denoised_fn=lambda x: x,
            model_kwargs={"y": torch.tensor([1, 3])})


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU error")
def test_cuda_graph_needs_cuda(model):
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        run(model, "ddim_sample_loop", None, cuda_graph=True, model_kwargs={"y": torch.tensor([1, 3])})


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_graph_matches_eager(model):
    m = model.cuda()
    d = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing="10")
    y = torch.tensor([1, 3], device="cuda")
    out = []
    for graph in (False, True):
        g = torch.Generator(device="cuda").manual_seed(0)
        out.append(d.ddim_sample_loop(m, SHAPE, device="cuda", model_kwargs={"y": y}, cuda_graph=graph,
                                      randn_like=lambda x: torch.randn(x.shape, device="cuda", generator=g)))
    assert (out[0] - out[1]).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="cannot capture cond_fn"):
        d.ddim_sample_loop(m, SHAPE, device="cuda", model_kwargs={"y": y}, cuda_graph=True,
                           cond_fn=lambda x, t, y=None: x * 0)
    model.cpu()


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_edm_samplers_fused_fp32_match_float64(name):
    """fp32 runs the fused Euler/Heun kernels, float64 the PyTorch steps: same trajectory."""
    from fastguide.diffusion import edm_sigmas
    from fastguide.sampling import SAMPLERS

    def denoiser(x, sigma, **kw):  # exact denoiser of N(0.5, 0.3^2) data
        s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype) ** 2
        return (0.09 * x + 0.5 * s2) / (0.09 + s2)
    sigmas = edm_sigmas(12)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    churn = {"S_churn": 2.0}
    g32, g64 = (torch.Generator().manual_seed(1) for _ in range(2))
    out32 = SAMPLERS[name](denoiser, x.float(), sigmas, disable=True, **churn,
                           randn_like=lambda t: torch.randn(t.shape, generator=g32).to(t.dtype))
    out64 = SAMPLERS[name](denoiser, x, sigmas, disable=True, **churn,
                           randn_like=lambda t: torch.randn(t.shape, generator=g64).to(t.dtype))
    assert out32.dtype == torch.float32
    assert (out32.double() - out64).abs().max() <= 1e-5
