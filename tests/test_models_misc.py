"""Model behaviour beyond the reference vectors: timestep embedding, attention orders, reduced
precision, the backend switch, channels_last, gradient checkpointing, the null class and input
errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastguide.nn import EncoderUNet, SuperResUNet, UNet, timestep_embedding
from fastguide.nn.attention import AttentionBlock, qkv_attention
from fastguide.nn.norm import GroupNormAct

SMALL = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
             attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16)


def randomize(model, seed=0):
    """Every parameter nonzero (guided-diffusion zero-initialises residual outputs), scaled as in
    the reference checkpoints so that activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("weight") and isinstance(model.get_submodule(name[:-7]), GroupNormAct):
                r = 1 + 0.1 * r
            elif p.dim() >= 2:
                r = r / math.sqrt(p[0].numel())
            else:
                r = 0.05 * r
            p.copy_(r)
    return model.eval()


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def inputs(n=2, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.tensor([5, 900.5])[:n]


# ---- timestep embedding and attention ----------------------------------------------------------

def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 250, 999], dtype=torch.int64)
    emb = timestep_embedding(t, 7)  # odd: padded with one zero column
    half = 3
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    args = t.numpy()[:, None].astype(np.float64) * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args), np.zeros((4, 1))], axis=1)  # cos first
    assert emb.dtype == torch.float32 and emb.shape == (4, 7)
    np.testing.assert_allclose(emb.numpy(), expected, atol=1e-4)  # fp32 args up to 999
    frac = timestep_embedding(torch.tensor([0.5], dtype=torch.float64), 4)
    assert frac.dtype == torch.float32
    np.testing.assert_allclose(frac.numpy(), [[math.cos(0.5), math.cos(0.005),
                                               math.sin(0.5), math.sin(0.005)]], atol=1e-6)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_qkv_attention_orders(order):
    n, heads, ch, length = 2, 3, 8, 10
    qkv = torch.randn(n, 3 * heads * ch, length, dtype=torch.float64)
    # Independent per-head computation from the documented channel layouts.
    if order == "legacy":
        blocks = qkv.view(n, heads, 3, ch, length)
        q, k, v = blocks[:, :, 0], blocks[:, :, 1], blocks[:, :, 2]
    else:
        blocks = qkv.view(n, 3, heads, ch, length)
        q, k, v = blocks[:, 0], blocks[:, 1], blocks[:, 2]
    w = torch.softmax(torch.einsum("nhct,nhcs->nhts", q, k) / math.sqrt(ch), dim=-1)
    expected = torch.einsum("nhts,nhcs->nhct", w, v).reshape(n, heads * ch, length)
    for backend in ("fused", "reference"):
        out = qkv_attention(qkv.float(), heads, order, backend)
        assert out.shape == (n, heads * ch, length)
        assert (out.double() - expected).abs().max() < 1e-5
    other = "new" if order == "legacy" else "legacy"
    assert (qkv_attention(qkv.float(), heads, other).double() - expected).abs().max() > 1e-2


def test_heads_from_num_head_channels():
    assert AttentionBlock(128, num_heads=1, num_head_channels=32).num_heads == 4
    assert AttentionBlock(128, num_heads=2).num_heads == 2
    with pytest.raises(ValueError, match="num_head_channels=48 must divide the channel count 128"):
        AttentionBlock(128, num_head_channels=48)


# ---- precision ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cond_ref(reference_dir):
    import json
    z = dict(np.load(reference_dir / "unet_cond_ss.npz"))
    config = json.loads(str(z["config"]))
    state = torch.load(reference_dir / "unet_cond_ss.pt", weights_only=True)
    # The first two of the four samples: enough for these checks, half the CPU time.
    return config, state, {k: torch.from_numpy(v[:2]) for k, v in z.items()
                           if v.dtype.kind in "fi" and v.ndim}


# Tolerance for reduced precision, on the relative RMS error of the whole output:
# each conv rounds its weights and inputs to a p-bit significand (unit roundoff u = 2^-p:
# bf16 2^-8, fp16 2^-11) while accumulating and normalising in fp32. ~40 such layers in series
# with independent rounding add up roughly in quadrature (sqrt(40) * u / sqrt(3) ~ 3.7u, and
# 3.5u is measured for both dtypes on these weights). 8u leaves 2x margin; an fp16 error in
# the bf16 range, or any real bug (std ~0.56 outputs), is far outside it.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_close_to_fp32(cond_ref, dtype):
    config, state, z = cond_ref
    model = UNet(**config, dtype=dtype)
    model.load_state_dict(state, strict=True)
    model.eval()
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == dtype
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # norms fp32
    assert model.input_blocks[1][0].emb_layers[1].weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32
    x, t, y, ref = z["x"], z["timesteps"], z["y"], z["out"]
    with torch.no_grad():
        out = model(x, t, y=y)
        out_lowp_input = model(x.to(dtype), t, y=y)
    assert out.dtype == torch.float32 and out_lowp_input.dtype == dtype
    tol = 8 * UNIT_ROUNDOFF[dtype]
    assert ((out - ref).norm() / ref.norm()).item() < tol
    assert ((out_lowp_input.float() - ref).norm() / ref.norm()).item() < tol
    # Both backends see the same rounded weights: they agree to well within that.
    model.set_backend("reference")
    with torch.no_grad():
        out_ref_backend = model(x, t, y=y)
    assert ((out - out_ref_backend).norm() / ref.norm()).item() < tol / 2


def test_dtype_arguments():
    assert UNet(**SMALL, use_fp16=True).dtype == torch.float16
    assert UNet(**SMALL, dtype="bfloat16").config["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="use_fp16=True contradicts dtype"):
        UNet(**SMALL, use_fp16=True, dtype=torch.bfloat16)
    m = UNet(**SMALL).convert_to_fp16()
    assert m.dtype == torch.float16 and m.time_embed[0].weight.dtype == torch.float32


# ---- backend switch and layouts ----------------------------------------------------------------

MODELS = {
    "unet_additive_conv_resample": lambda: UNet(**SMALL, num_classes=5),
    "unet_ss_updown_new_order": lambda: UNet(**SMALL, use_scale_shift_norm=True,
                                             resblock_updown=True, use_new_attention_order=True),
    "unet_avgpool_no_conv_resample_1d": lambda: UNet(**dict(SMALL, conv_resample=False, dims=1)),
    "superres": lambda: SuperResUNet(**SMALL, num_classes=5, use_scale_shift_norm=True),
    "classifier_attention": lambda: EncoderUNet(**SMALL, pool="attention"),
    "classifier_adaptive": lambda: EncoderUNet(**SMALL, pool="adaptive"),
    "classifier_spatial": lambda: EncoderUNet(**SMALL, pool="spatial"),
    "classifier_spatial_v2": lambda: EncoderUNet(**SMALL, pool="spatial_v2"),
}


def run(model, x, t):
    if isinstance(model, SuperResUNet):
        return model(x, t, low_res=x[:, :, ::2, ::2], y=torch.tensor([0, 4]))
    if isinstance(model, UNet) and model.num_classes:
        return model(x, t, y=torch.tensor([0, 4]))
    return model(x, t)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_and_reference_backends_agree(name):
    model = randomize(MODELS[name]())
    x, t = inputs()
    if model.config["dims"] == 1:
        x = x[:, :, 0]  # [N, C, 16]
    with torch.no_grad():
        fused = run(model, x, t)
        model.set_backend("reference")
        reference = run(model, x, t)
    assert all(m.backend == "reference" for m in model.modules()
               if isinstance(m, (GroupNormAct, AttentionBlock)))
    assert fused.abs().max() > 0.1  # a real, non-trivial output
    assert rel_err(fused, reference) < 1e-5


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        UNet(**SMALL, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        UNet(**SMALL).set_backend("cuda")


@pytest.mark.parametrize("name", ["unet_ss_updown_new_order", "superres", "classifier_attention"])
def test_channels_last_end_to_end(name):
    model = randomize(MODELS[name]())
    x, t = inputs()
    with torch.no_grad():
        expected = run(model, x, t)
    model = model.to(memory_format=torch.channels_last)
    layouts = []

    def record(module, args, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1:
            layouts.append((type(module).__name__,
                            out.is_contiguous(memory_format=torch.channels_last)))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    with torch.no_grad():
        out = run(model, x.to(memory_format=torch.channels_last), t)
    for h in hooks:
        h.remove()
    assert len(layouts) > 20 and all(cl for _, cl in layouts), [n for n, cl in layouts if not cl]
    assert rel_err(out, expected) < 1e-5


def test_classifier_heads_by_hand():
    """adaptive and spatial heads recomputed from the trunk's features with plain torch ops."""
    x, t = inputs()
    feats = []
    for pool in ("adaptive", "spatial", "spatial_v2"):
        model = randomize(MODELS[f"classifier_{pool}"]())
        feats.clear()
        hooks = [b.register_forward_hook(lambda m, a, out: feats.append(out))
                 for b in list(model.input_blocks) + [model.middle_block]]
        with torch.no_grad():
            logits = model(x, t)
        for h in hooks:
            h.remove()
        head = model.out
        if pool == "adaptive":
            h = F.silu(F.group_norm(feats[-1], 32, head[0].weight, head[0].bias, 1e-5))
            expected = F.conv2d(h.mean(dim=(2, 3), keepdim=True), head[3].weight,
                                head[3].bias).flatten(1)
        else:
            h = torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)
            h = head[0](h)
            if pool == "spatial":
                h = torch.relu(h)
                expected = head[2](h)
            else:
                h = F.silu(F.group_norm(h, 32, head[1].weight, head[1].bias, 1e-5))
                expected = head[3](h)
        assert logits.shape == (2, 6)
        assert rel_err(logits, expected) < 1e-5, pool


# ---- gradient checkpointing --------------------------------------------------------------------

def count_saved_tensors(fn):
    n = [0]

    def pack(t):
        n[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, n[0]


def test_checkpointing_training_gradients(cond_ref):
    config, state, z = cond_ref
    model = UNet(**dict(config, dropout=0.1))  # dropout: checkpointing must replay its RNG
    model.load_state_dict(state, strict=True)
    model.train()

    def grads(checkpointing):
        model.set_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(0)
        out, saved = count_saved_tensors(lambda: model(z["x"], z["timesteps"], y=z["y"]))
        out.square().mean().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}, saved

    plain, saved_plain = grads(False)
    ckpt, saved_ckpt = grads(True)
    assert saved_ckpt < saved_plain / 2  # it really checkpointed
    for k in plain:
        assert torch.allclose(ckpt[k], plain[k], rtol=1e-4, atol=1e-6), k
    assert plain["input_blocks.1.0.out_layers.3.weight"].abs().max() > 0


def test_checkpointing_input_gradient_with_frozen_model(cond_ref):
    """Guidance through the diffusion model itself (e.g. universal guidance): only d/dx."""
    config, state, z = cond_ref
    model = UNet(**config, use_checkpoint=True)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)

    def input_grad():
        x = z["x"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x, z["timesteps"], y=z["y"]).square().sum(), x)
        return g

    with_ckpt = input_grad()
    model.set_checkpointing(False)
    assert torch.allclose(with_ckpt, input_grad(), rtol=1e-5, atol=1e-6)
    assert with_ckpt.abs().max() > 0


# ---- null class --------------------------------------------------------------------------------

def test_null_class_is_the_unconditional_model(cond_ref):
    """With the null row at zero, the null label gives exactly the model without label_emb."""
    config, state, z = cond_ref
    model = UNet(**config, null_class=True)
    model.load_state_dict(state, strict=True)  # guided-diffusion's 10-row label_emb
    uncond = UNet(**dict(config, num_classes=None))
    uncond.load_state_dict({k: v for k, v in state.items() if k != "label_emb.weight"})
    null = torch.full((2,), model.null_label)
    with torch.no_grad():
        assert rel_err(model(z["x"], z["timesteps"], y=null),
                       uncond(z["x"], z["timesteps"])) < 1e-6
        assert rel_err(model(z["x"], z["timesteps"], y=z["y"]), z["out"]) < 1e-5
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\] \(label 10 is the null"):
        model(z["x"], z["timesteps"], y=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="null_class=True needs a class-conditional model"):
        UNet(**SMALL, null_class=True)


# ---- input errors ------------------------------------------------------------------------------

def test_bad_inputs():
    cond = UNet(**SMALL, num_classes=10)
    uncond = UNet(**SMALL)
    x, t = inputs()
    y = torch.tensor([1, 2])
    cases = [
        (lambda: cond(torch.randn(2, 3, 32, 32), t, y=y), "image size mismatch: x is \\[32, 32\\]"),
        (lambda: cond(x[:, :2], t, y=y), "x has 2 channels, this model takes 3"),
        (lambda: cond(x[0], t, y=y), "x must be \\[N, 3, 2 spatial dims\\]"),
        (lambda: cond(x, t), "y is required: this model is class-conditional with num_classes=10"),
        (lambda: cond(x, t, y=torch.tensor([1, 10])), r"y out of range: labels must be in \[0, 9\]"),
        (lambda: cond(x, t, y=torch.tensor([-1, 0])), "y out of range"),
        (lambda: cond(x, t, y=torch.tensor([1])), "y must have shape \\[2\\]"),
        (lambda: uncond(x, t, y=y), "y was given, but this model is unconditional"),
        (lambda: uncond(x, torch.tensor([1, 2, 3])), "timesteps must be a scalar or have shape"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="y must be an int64 tensor of class labels, got dtype"):
        cond(x, t, y=y.float())
    anysize = UNet(**dict(SMALL, image_size=None))
    assert anysize(torch.randn(1, 3, 24, 8), 3).shape == (1, 6, 24, 8)  # scalar t broadcasts
    with pytest.raises(ValueError, match="must be divisible by 2"):
        anysize(torch.randn(1, 3, 15, 16), 3)
    sr = SuperResUNet(**SMALL)
    with pytest.raises(ValueError, match="low_res is required"):
        sr(x, t)
    clf = EncoderUNet(**SMALL, pool="attention")
    clf.config["image_size"] = None  # only the attention pool's own check remains
    with pytest.raises(ValueError, match="attention pool expects a 8x8 feature map"):
        clf(torch.randn(2, 3, 32, 32), t)
