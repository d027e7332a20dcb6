"""Checkpoints: config inference on the reference checkpoints, strict loading with clear errors,
fastguide's safetensors + JSON format, and files that must be refused."""
import inspect
import json

import numpy as np
import pytest
import torch

import fastguide
from fastguide.nn import UNet
from fastguide.nn.checkpoint import (CheckpointError, CheckpointMismatchError,
                                     model_from_state_dict)
from fastguide.nn.infer import infer_config

NAMES = ("unet_cond_ss", "unet_uncond", "classifier", "superres")
KIND = {"unet_cond_ss": "unet", "unet_uncond": "unet", "classifier": "classifier",
        "superres": "superres"}
UNSHAPED = ("num_heads", "num_head_channels", "use_new_attention_order", "image_size")


def gd_config(reference_dir, name):
    """guided-diffusion's constructor kwargs of a reference model, with every default filled."""
    config = json.loads(str(np.load(reference_dir / f"{name}.npz")["config"]))
    cls = fastguide.nn.EncoderUNet if name == "classifier" else UNet
    params = inspect.signature(cls).parameters.values()
    full = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and p.kind is not inspect.Parameter.KEYWORD_ONLY}
    full.update(config)
    full.pop("use_fp16")
    for k in ("attention_resolutions", "channel_mult"):
        full[k] = tuple(full[k])
    return {"kind": KIND[name], **full}


def unshaped_overrides(config):
    """What no state dict can tell (attention heads, qkv order, UNet image size)."""
    return {k: config[k] for k in UNSHAPED}


def load_state(reference_dir, name):
    return torch.load(reference_dir / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("name", NAMES)
def test_infer_config_of_reference_checkpoints(reference_dir, name):
    expected = gd_config(reference_dir, name)
    assert infer_config(load_state(reference_dir, name), **unshaped_overrides(expected)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_load_checkpoint_reproduces_reference(reference_dir, name):
    expected = gd_config(reference_dir, name)
    model = fastguide.load_checkpoint(reference_dir / f"{name}.pt", **unshaped_overrides(expected))
    assert not model.training
    assert {k: model.config[k] for k in expected} == expected
    z = {k: torch.from_numpy(v) for k, v in np.load(reference_dir / f"{name}.npz").items()
         if v.dtype.kind in "fi"}
    with torch.no_grad():
        if name == "classifier":
            out, ref = model(z["x"], z["timesteps"]), z["logits"]
        elif name == "superres":
            out, ref = model(z["x"], z["timesteps"], low_res=z["low_res"], y=z["y"]), z["out"]
        else:
            out, ref = model(z["x"], z["timesteps"], y=z.get("y")), z["out"]
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_heads_cannot_be_inferred_warns(reference_dir):
    with pytest.warns(UserWarning, match="heads and qkv order cannot be inferred"):
        config = infer_config(load_state(reference_dir, "unet_uncond"))
    assert (config["num_heads"], config["num_head_channels"]) == (4, -1)  # guided-diffusion's
    assert config["image_size"] is None  # a UNet's image size is not in its weights


def test_classifier_image_size_from_attention_pool(reference_dir):
    config = infer_config(load_state(reference_dir, "classifier"), num_head_channels=16)
    assert config["image_size"] == 32 and config["pool"] == "attention"


def test_mismatch_lists_missing_unexpected_and_shapes(reference_dir, tmp_path):
    config = gd_config(reference_dir, "unet_uncond")
    state = load_state(reference_dir, "unet_uncond")
    del state["middle_block.1.proj_out.bias"]
    state["middle_block.1.extra"] = torch.zeros(3)
    state["out.2.bias"] = torch.zeros(5)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        fastguide.load_checkpoint(path, **unshaped_overrides(config))
    msg = str(info.value)
    assert "missing keys (1)" in msg and "middle_block.1.proj_out.bias" in msg
    assert "unexpected keys (1)" in msg and "middle_block.1.extra" in msg
    assert "out.2.bias: checkpoint [5] vs model [3]" in msg
    assert "'model_channels': 32" in msg  # the config it inferred
    assert info.value.missing == ["middle_block.1.proj_out.bias"]


def test_wrong_override_is_a_mismatch(reference_dir):
    state = load_state(reference_dir, "unet_uncond")
    with pytest.raises(CheckpointError, match="with the given num_res_blocks=2"):
        infer_config(state, num_res_blocks=2, num_heads=2)
    with pytest.raises(CheckpointMismatchError, match=r"input_blocks.2.0.op.weight"):
        infer_config(state, num_res_blocks=5, num_heads=2)  # one level of 5 blocks
    config = dict(gd_config(reference_dir, "unet_uncond"), model_channels=64)
    with pytest.raises(CheckpointMismatchError, match="time_embed.0.weight: checkpoint"):
        model_from_state_dict(state, config)


def test_null_class_loads_guided_diffusion_checkpoint_strictly(reference_dir):
    config = gd_config(reference_dir, "unet_cond_ss")
    model = fastguide.load_checkpoint(reference_dir / "unet_cond_ss.pt", null_class=True,
                                      **unshaped_overrides(config))
    assert model.num_classes == 10 and model.null_label == 10
    assert model.label_emb.weight.shape == (11, 128)
    assert torch.equal(model.label_emb.weight[10], torch.zeros(128))
    ref = load_state(reference_dir, "unet_cond_ss")["label_emb.weight"]
    assert torch.equal(model.label_emb.weight[:10], ref)


def test_ddp_prefix_and_wrapper_dict(reference_dir, tmp_path):
    config = gd_config(reference_dir, "unet_uncond")
    state = load_state(reference_dir, "unet_uncond")
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = fastguide.load_checkpoint(path, **unshaped_overrides(config))
    assert torch.equal(model.out[2].weight, state["out.2.weight"])


# ---- fastguide format --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cond_model(reference_dir):
    config = gd_config(reference_dir, "unet_cond_ss")
    return fastguide.load_checkpoint(reference_dir / "unet_cond_ss.pt",
                                     **unshaped_overrides(config))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 700]),
            torch.tensor([1, 9]))


def test_safetensors_round_trip(cond_model, tmp_path):
    path = fastguide.save_model(cond_model, tmp_path / "m.safetensors")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["kind"] == "unet" and saved["num_head_channels"] == 16
    assert saved["channel_mult"] == [1, 2, 2] and "backend" not in saved
    loaded = fastguide.load_checkpoint(path, backend="reference")
    assert loaded.config == dict(cond_model.config, backend="reference")
    for k, v in cond_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x, t, y = _inputs()
    with torch.no_grad():  # same weights, other backend: fp32 rounding only
        a, b = loaded(x, t, y=y), cond_model(x, t, y=y)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()

    (tmp_path / "m.json").unlink()  # the metadata copy of the config suffices
    assert fastguide.load_checkpoint(path).config == cond_model.config


def test_safetensors_keeps_dtype_and_null_row(cond_model, tmp_path):
    config = {k: v for k, v in cond_model.config.items() if k != "kind"}
    model = UNet(**dict(config, null_class=True, dtype=torch.bfloat16))
    with torch.no_grad():
        model.label_emb.weight[10] = 0.5  # a trained null row must survive the round trip
    path = fastguide.save_model(model, tmp_path / "cfg.safetensors")
    loaded = fastguide.load_checkpoint(path)
    assert loaded.dtype == torch.bfloat16 and loaded.config["null_class"]
    assert torch.equal(loaded.label_emb.weight[10], torch.full((128,), 0.5))
    assert fastguide.load_checkpoint(path, dtype="float32").dtype == torch.float32


# ---- refused files -----------------------------------------------------------------------------

def test_truncated_files(reference_dir, tmp_path, cond_model):
    data = (reference_dir / "unet_uncond.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        fastguide.load_checkpoint(tmp_path / "cut.pt")
    path = fastguide.save_model(cond_model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        fastguide.load_checkpoint(path)


def test_foreign_state_dict(tmp_path):
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), tmp_path / "conv.pt")
    with pytest.raises(CheckpointError, match="not a guided-diffusion UNet / classifier"):
        fastguide.load_checkpoint(tmp_path / "conv.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        fastguide.load_checkpoint(tmp_path / "tensor.pt")


class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_needs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"time_embed.0.weight": torch.zeros(4, 1), "payload": _Payload(marker)},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="would execute code"):
        fastguide.load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


# ---- inference beyond the released architectures -----------------------------------------------

_BASE = dict(image_size=None, in_channels=3, model_channels=64, out_channels=3, num_res_blocks=2,
             attention_resolutions=(2,), channel_mult=(1, 2, 2), num_head_channels=32)
_VARIANTS = {
    "avgpool_down_no_conv": ("unet", dict(conv_resample=False)),
    "1d_updown_scale_shift": ("unet", dict(dims=1, resblock_updown=True,
                                           use_scale_shift_norm=True)),
    "half_mult_classes_3_blocks": ("unet", dict(channel_mult=(0.5, 1, 1), num_classes=7,
                                                num_res_blocks=3, attention_resolutions=(1, 4))),
    "one_level": ("unet", dict(channel_mult=(1,), num_res_blocks=1, attention_resolutions=())),
    "superres_3_channel_out": ("superres", dict(out_channels=3)),
    "classifier_adaptive": ("classifier", dict(pool="adaptive", out_channels=10)),
    "classifier_spatial": ("classifier", dict(pool="spatial", out_channels=10)),
    "classifier_spatial_v2": ("classifier", dict(pool="spatial_v2", out_channels=10)),
}


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_infer_config_variants(variant):
    kind, changes = _VARIANTS[variant]
    config = dict(_BASE, kind=kind, **changes)
    with torch.device("meta"):
        model = fastguide.nn.infer.build_model(config)
    inferred = infer_config(model.state_dict(), num_head_channels=32, num_heads=1)
    expected = {k: v for k, v in model.config.items() if k not in ("dtype", "backend",
                                                                  "null_class")}
    if kind == "classifier" and changes["pool"] != "attention":
        assert inferred.pop("image_size") is None  # only the attention pool records it
        expected.pop("image_size")
    assert inferred == expected


def test_ambiguous_depth_needs_num_res_blocks():
    """Identical ResBlocks everywhere and BigGAN down blocks: 4 levels x 1 block and 2 levels x
    3 blocks give the very same keys and shapes (a classifier has no decoder to tell them apart)."""
    config = dict(_BASE, kind="classifier", image_size=64, channel_mult=(1, 1, 1, 1),
                  num_res_blocks=1, attention_resolutions=(), resblock_updown=True,
                  pool="adaptive", out_channels=10)
    with torch.device("meta"):
        state = fastguide.nn.infer.build_model(config).state_dict()
    with pytest.raises(CheckpointError, match=r"fits several depths .*pass num_res_blocks="):
        infer_config(state, num_head_channels=32)
    inferred = infer_config(state, num_head_channels=32, num_res_blocks=1)
    assert inferred["channel_mult"] == (1, 1, 1, 1)
