"""The benchmarks' FLOP accounting against shared/reference/adm_flops.md, and its internal
consistency (forward, training step, guidance gradient)."""
import re

import pytest

from fastguide.bench import flops
from fastguide.bench.models import model_config
from fastguide.nn import presets


def parse_table(text):
    """{preset: (params M, fwd GFLOPs/img, attention bmm GFLOPs)} from the two per-model tables
    of adm_flops.md (rows named by their checkpoint, e.g. "(256x256_diffusion.pt)")."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| [^|]*\((\w+)\.pt[^|]*\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                         line)
        if match:
            name = presets.ALIASES[match.group(1)]
            rows[name] = tuple(float(match.group(i)) for i in (3, 4, 5))
    return rows


@pytest.fixture(scope="module")
def table(reference_dir):
    rows = parse_table((reference_dir / "adm_flops.md").read_text())
    assert len(rows) == 12, sorted(rows)  # 8 diffusion models/upsamplers (LSUN once), 4 classifiers
    return rows


def attention_pool_difference(name):
    """FLOPs guided-diffusion spends and fastguide does not: its AttentionPool2d applies c_proj
    (C -> classes) to all H*W + 1 tokens and keeps one; fastguide projects that one only."""
    cfg = model_config(name)
    if cfg["kind"] != "classifier":
        return 0
    channels = int(cfg["model_channels"] * cfg["channel_mult"][-1])
    side = cfg["image_size"] // 2 ** (len(cfg["channel_mult"]) - 1)
    return 2 * channels * cfg["out_channels"] * side * side


@pytest.mark.parametrize("name", presets.names())
def test_forward_flops_and_params_match_adm_table(table, name):
    params_m, gflops, attention_gflops = table[name]
    counted = flops.forward_flops(name)
    assert round(counted["params"] / 1e6, 2) == params_m
    guided_diffusion = counted["total"] + attention_pool_difference(name)
    assert abs(guided_diffusion / 1e9 - gflops) <= 0.05 + 1e-9, (guided_diffusion / 1e9, gflops)
    assert abs(counted["by_op"]["bmm"] / 1e9 - attention_gflops) <= 0.005 + 1e-9


def test_attention_pool_difference_is_what_separates_classifiers_from_the_table(table):
    # Without the correction, 146.63 would round to 146.6, not the table's 146.7.
    counted = flops.forward_flops("classifier256")["total"]
    assert attention_pool_difference("classifier256") == 2 * 512 * 1000 * 64
    assert round(counted / 1e9, 1) == 146.6 and table["classifier256"][1] == 146.7


def test_guidance_gradient_is_forward_plus_input_gradients():
    fwd = flops.forward_flops("classifier64")["by_op"]
    guide = flops.guidance_flops("classifier64")["by_op"]
    # Frozen weights: each conv's backward is its input gradient only, the forward's FLOPs again.
    assert guide["convolution_backward"] == fwd["convolution"]
    assert guide["convolution"] == fwd["convolution"]
    # 295.7 GFLOPs for the 256 classifier (adm_flops.md's 303.4 also re-runs GD's checkpointed
    # attention and takes its weight gradients).
    assert round(flops.guidance_flops("classifier256")["total"] / 1e9, 1) == 295.7


def test_training_step_is_forward_plus_weight_and_input_gradients():
    fwd = flops.forward_flops("tiny_unet")["by_op"]
    train = flops.train_flops("tiny_unet")["by_op"]
    cfg = model_config("tiny_unet")
    # Every conv computes a weight gradient and an input gradient (each = its forward FLOPs),
    # except the first conv, whose input (the image) needs no gradient.
    first_conv = 2 * cfg["in_channels"] * cfg["model_channels"] * 9 * cfg["image_size"] ** 2
    assert train["convolution_backward"] == 2 * fwd["convolution"] - first_conv


def test_sampling_step_flops():
    fwd = flops.forward_flops("imagenet256_cond")["total"]
    assert flops.sampling_step_flops("imagenet256_cond", "cfg") == 2 * fwd
    with_classifier = flops.sampling_step_flops("imagenet256_cond", "classifier", "classifier256")
    assert round(with_classifier / 1e9, 1) == round(2239.7 + 295.7, 1)
    with pytest.raises(ValueError, match="guidance"):
        flops.sampling_step_flops("imagenet256_cond", "both")


def test_peak_is_the_h100_figure_on_cuda_and_none_on_cpu():
    assert flops.peak_flops("cuda") == 790e12
    assert flops.peak_flops("cpu") is None
