"""The reference checkpoints on CUDA, both backends, fp32 and bf16. Skipped without a GPU."""
import numpy as np
import pytest
import torch

from conftest import HAS_CUDA, load_reference_model
from test_adagn import rel_err

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _no_tf32():
    # fp32 comparisons need true fp32 convolutions and matmuls.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_reference_vectors_on_cuda(reference_dir, backend, channels_last):
    d = np.load(reference_dir / "unet_cond_ss.npz")
    model = load_reference_model(reference_dir, "unet_cond_ss.pt", str(d["config"])).cuda()
    model.set_backend(backend)
    x = torch.from_numpy(d["x"]).cuda()
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x, torch.from_numpy(d["timesteps"]).cuda(), y=torch.from_numpy(d["y"]).cuda())
    assert rel_err(out.cpu(), torch.from_numpy(d["out"])) <= 1e-4


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_bf16_close_to_fp32_on_cuda(reference_dir, backend):
    d = np.load(reference_dir / "unet_cond_ss.npz")
    model = load_reference_model(reference_dir, "unet_cond_ss.pt", str(d["config"])).cuda().eval()
    model.set_backend(backend)
    args = [torch.from_numpy(d[k]).cuda() for k in ("x", "timesteps")]
    y = torch.from_numpy(d["y"]).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(*args, y=y).float()
    # bf16 activations: a few units of 2^-8 relative through ~40 layers (as on the CPU tests).
    assert rel_err(out.cpu(), torch.from_numpy(d["out"])) <= 8 * 2.0**-8


def test_classifier_guidance_gradient_on_cuda(reference_dir):
    d = np.load(reference_dir / "classifier.npz")
    clf = load_reference_model(reference_dir, "classifier.pt", str(d["config"])).cuda()
    for p in clf.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(d["x"]).cuda().requires_grad_()
    logp = torch.log_softmax(clf(x, torch.from_numpy(d["timesteps"]).cuda()), -1)
    sel = logp[torch.arange(4), torch.from_numpy(d["y"]).cuda()].sum()
    grad, = torch.autograd.grad(sel, x)
    assert rel_err(grad.cpu(), torch.from_numpy(d["grad"])) <= 1e-4
