"""fastguide's models against outputs of openai/guided-diffusion on the reference checkpoints
(random weights; see ../shared/reference/README.txt). fp32, both backends, <= 1e-5 relative."""
import json

import numpy as np
import pytest
import torch

from fastguide.nn import EncoderUNet, SuperResUNet, UNet

RTOL = 1e-5  # single forward passes in fp32: only conv-algorithm rounding differs (README)
CLASSES = {"unet_cond_ss": UNet, "unet_uncond": UNet, "classifier": EncoderUNet,
           "superres": SuperResUNet}


def assert_rel_close(actual, expected, rtol=RTOL):
    """max |actual - expected| <= rtol * max |expected| (outputs have std ~0.5, no tiny scale)."""
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.detach().float() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f"max error {err:.3e} > {rtol:g} * max|ref| {scale:.3e}"


@pytest.fixture(scope="module")
def ref(reference_dir):
    """name -> (npz arrays, model built from guided-diffusion's exact constructor kwargs)."""
    out = {}
    for name, cls in CLASSES.items():
        z = dict(np.load(reference_dir / f"{name}.npz"))
        config = json.loads(str(z["config"]))
        model = cls(**config)  # the very kwargs given to guided-diffusion's class
        state = torch.load(reference_dir / f"{name}.pt", weights_only=True)
        model.load_state_dict(state, strict=True)
        out[name] = ({k: torch.from_numpy(v) for k, v in z.items() if v.dtype.kind in "fi"},
                     model.eval())
    return out


@pytest.fixture(params=["fused", "reference"])
def backend(request):
    return request.param


def test_key_counts(ref):
    counts = {"unet_cond_ss": 307, "unet_uncond": 166, "classifier": 145, "superres": 199}
    for name, n in counts.items():
        assert len(ref[name][1].state_dict()) == n


def test_unet_cond_scale_shift(ref, backend):
    z, model = ref["unet_cond_ss"]
    model.set_backend(backend)
    with torch.no_grad():
        assert_rel_close(model(z["x"], z["timesteps"], y=z["y"]), z["out"])
        # fractional timesteps (rescale_timesteps=True) are legal
        assert_rel_close(model(z["x"], z["timesteps_float"], y=z["y"]), z["out_float_t"])


def test_unet_uncond_additive_new_order(ref, backend):
    z, model = ref["unet_uncond"]
    model.set_backend(backend)
    with torch.no_grad():
        assert_rel_close(model(z["x"], z["timesteps"]), z["out"])


def test_superres(ref, backend):
    z, model = ref["superres"]
    model.set_backend(backend)
    assert_rel_close(SuperResUNet.upsample_low_res(z["low_res"], (32, 32)), z["low_res_upsampled"])
    with torch.no_grad():
        out = model(z["x"], z["timesteps"], low_res=z["low_res"], y=z["y"])
    assert_rel_close(out, z["out"])


def test_classifier_logits(ref, backend):
    z, model = ref["classifier"]
    model.set_backend(backend)
    with torch.no_grad():
        logits = model(z["x"], z["timesteps"])
    assert_rel_close(logits, z["logits"])
    assert_rel_close(torch.log_softmax(logits, dim=-1), z["log_probs"])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_classifier_guidance_gradient(ref, backend, checkpointing):
    """d/dx sum_i log p(y_i | x_i, t_i) with the classifier's parameters frozen: what cond_fn
    computes. guided-diffusion's forced attention checkpoint raises here (gotcha 5)."""
    z, model = ref["classifier"]
    model.set_backend(backend).set_checkpointing(checkpointing)
    model.requires_grad_(False)
    try:
        x = z["x"].clone().requires_grad_(True)
        log_probs = torch.log_softmax(model(x, z["timesteps"]), dim=-1)
        selected = log_probs[torch.arange(len(z["y"])), z["y"]]
        (grad,) = torch.autograd.grad(selected.sum(), x)
    finally:
        model.requires_grad_(True).set_checkpointing(False)
    assert_rel_close(selected, z["selected"])
    assert_rel_close(grad, z["grad"])
