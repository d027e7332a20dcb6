"""The released configurations: parameter counts against adm_flops.md (built on the meta device,
so no memory or time is spent), and config inference from their state dicts."""
import re
import warnings

import pytest
import torch

from fastguide.nn import EncoderUNet, SuperResUNet, UNet, presets
from fastguide.nn.infer import infer_config

# adm_flops.md, "params (M)" column (2 decimals), by preset.
TABLE_PARAMS_M = {
    "imagenet64_cond": 295.90, "imagenet128_cond": 421.53, "imagenet256_cond": 553.84,
    "imagenet256_uncond": 552.81, "imagenet512_cond": 559.00, "lsun256": 552.81,
    "upsampler64_256": 311.80, "upsampler128_512": 308.84, "classifier64": 65.44,
    "classifier128": 42.57, "classifier256": 54.10, "classifier512": 54.45,
}


def meta_model(name, **overrides):
    with torch.device("meta"):
        return presets.create(name, **overrides)


def test_every_preset_is_in_the_table():
    assert sorted(presets.names()) == sorted(TABLE_PARAMS_M)


@pytest.mark.parametrize("name", sorted(TABLE_PARAMS_M))
def test_parameter_count(name):
    n = meta_model(name).num_parameters()
    assert round(n / 1e6, 2) == pytest.approx(TABLE_PARAMS_M[name], abs=1e-9), n


def test_table_matches_adm_flops_md(reference_dir):
    """The numbers above are those of the reference file (rows named by checkpoint file)."""
    text = (reference_dir / "adm_flops.md").read_text()
    rows = re.findall(r"^\| [^|]*\(([\w.]+?)\.pt[^|]*\) \| \d+ \| ([\d.]+) \|", text, re.M)
    assert len(rows) == 12
    for stem, params in rows:
        name = presets.ALIASES[stem]
        assert TABLE_PARAMS_M[name] == float(params), stem


@pytest.mark.parametrize("name", sorted(TABLE_PARAMS_M))
def test_infer_config_recovers_preset(name):
    state = meta_model(name).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # released architectures need no head overrides
        inferred = infer_config(state)
    expected = presets.config(name)
    if name == "lsun256":  # dropout changes no shape; it resolves to the ImageNet 256 uncond
        assert expected.pop("dropout") == 0.1 and inferred.pop("dropout") == 0.0
        expected["dropout"] = inferred["dropout"] = 0.0
    assert inferred == expected


def test_preset_classes_and_aliases():
    assert type(meta_model("imagenet256_cond")) is UNet
    assert type(meta_model("upsampler64_256")) is SuperResUNet
    assert type(meta_model("classifier256")) is EncoderUNet
    assert presets.config("256x256_diffusion.pt") == presets.config("imagenet256_cond")
    assert presets.config("lsun_cat") == presets.config("lsun256")
    with pytest.raises(KeyError, match="unknown preset 'imagenet1024'"):
        presets.create("imagenet1024")


def test_preset_details():
    """Spot checks of what the README flags resolve to (adm_flops.md)."""
    m64 = meta_model("imagenet64_cond")
    attn = m64.input_blocks[5][1]  # level 1 (ds 2): 384 channels, num_head_channels=64
    assert (attn.channels, attn.num_heads, attn.order) == (384, 6, "new")
    m128 = meta_model("imagenet128_cond")
    assert m128.middle_block[1].num_heads == 4 and m128.middle_block[1].order == "legacy"
    m512 = meta_model("imagenet512_cond")
    assert m512.input_blocks[0][0].out_channels == 128  # channel_mult starts at 0.5
    assert m512.out[2].in_channels == 128
    sr = meta_model("upsampler128_512")
    assert sr.input_blocks[0][0].in_channels == 6 and sr.config["in_channels"] == 3
    c64 = meta_model("classifier64")
    assert c64.out[2].positional_embedding.shape == (512, 8 * 8 + 1)
    assert c64.out[2].num_heads == 8


def test_preset_overrides():
    m = meta_model("imagenet256_cond", dtype=torch.bfloat16, null_class=True)
    assert m.dtype == torch.bfloat16
    assert m.label_emb.weight.shape == (1001, 1024) and m.null_label == 1000
    assert m.time_embed[0].weight.dtype == torch.float32  # only the trunk is low precision
