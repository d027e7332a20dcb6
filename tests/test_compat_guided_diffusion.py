"""fastguide.compat.guided_diffusion as a drop-in for guided_diffusion.script_util: the README's
flags build the released architectures, and a guided sampling loop written as in
scripts/classifier_sample.py reproduces guided-diffusion's samples."""
import argparse
import json
import re
import shlex
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastguide
from fastguide.compat import guided_diffusion as gd
from fastguide.nn import presets


def parse(defaults, flags):
    """What a guided-diffusion script does with its command line."""
    parser = argparse.ArgumentParser()
    gd.add_dict_to_argparser(parser, defaults)
    return parser.parse_args(shlex.split(flags))


def readme_flags(reference_dir):
    """checkpoint stem -> README flags, from adm_flops.md."""
    text = (reference_dir / "adm_flops.md").read_text()
    sections = re.findall(r"^### [^(]*\(([\w]+)\.pt[^)]*\)\n\n```\n(.*?)\n```", text, re.M)
    assert len(sections) == 12
    return dict(sections)


def build(stem, flags):
    """The model a sampling script would build, on the meta device."""
    with torch.device("meta"):
        if "classifier" in stem:
            args = parse(gd.classifier_defaults(), flags)
            return gd.create_classifier(**gd.args_to_dict(args, gd.classifier_defaults().keys()))
        if "upsampler" in stem:
            defaults = gd.sr_model_and_diffusion_defaults()
            args = parse(defaults, flags)
            kw = gd.args_to_dict(args, defaults.keys())
            return gd.sr_create_model(
                kw["large_size"], kw["small_size"], kw["num_channels"], kw["num_res_blocks"],
                **{k: kw[k] for k in ("learn_sigma", "class_cond", "use_checkpoint",
                                      "attention_resolutions", "num_heads", "num_head_channels",
                                      "num_heads_upsample", "use_scale_shift_norm", "dropout",
                                      "resblock_updown", "use_fp16")})
        args = parse(gd.model_and_diffusion_defaults(), flags)
        kw = gd.args_to_dict(args, gd.model_and_diffusion_defaults().keys())
        model_args = {k: v for k, v in kw.items() if k not in gd.diffusion_defaults()}
        return gd.create_model(**model_args, learn_sigma=kw["learn_sigma"])


def test_readme_flags_build_the_presets(reference_dir):
    for stem, flags in readme_flags(reference_dir).items():
        model = build(stem, flags)
        expected = presets.config(stem)
        got = {k: model.config[k] for k in expected}
        assert got == expected, stem
        fp16 = "--use_fp16 True" in flags
        assert model.dtype == (torch.float16 if fp16 else torch.float32), stem


def test_create_model_and_diffusion_signature_and_defaults():
    args = parse(gd.model_and_diffusion_defaults(),
                 "--image_size 16 --num_channels 32 --channel_mult 1,2 --attention_resolutions 8 "
                 "--num_head_channels 16 --learn_sigma True --timestep_respacing 25 "
                 "--class_cond True --use_fp16 True")
    model, diffusion = gd.create_model_and_diffusion(
        **gd.args_to_dict(args, gd.model_and_diffusion_defaults().keys()))
    assert model.config["attention_resolutions"] == (2,) and model.num_classes == 1000
    assert model.learn_sigma and model.dtype == torch.float16
    assert model.convert_to_fp16() is model  # what the scripts call after loading
    assert diffusion.num_timesteps == 25 and diffusion.original_num_steps == 1000
    assert set(gd.sr_model_and_diffusion_defaults()) == set(
        __import__("inspect").signature(gd.sr_create_model_and_diffusion).parameters)
    with pytest.raises(ValueError, match="unsupported image size: 48"):
        gd.create_model(48, 32, 1)


def test_argparse_helpers():
    args = parse({"flag": False, "name": None, "n": 3, "x": 0.5}, "--flag yes --name a --n 4")
    assert (args.flag, args.name, args.n, args.x) == (True, "a", 4, 0.5)
    assert gd.args_to_dict(args, ["n", "flag"]) == {"n": 4, "flag": True}
    with pytest.raises(argparse.ArgumentTypeError, match="boolean value expected"):
        gd.str2bool("maybe")


def test_diffusion_missing_raises_not_implemented(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastguide.diffusion.compat", None)
    with pytest.raises(NotImplementedError, match="needs fastguide.diffusion.compat"):
        gd.create_gaussian_diffusion(steps=10)


def test_classifier_guided_ddim_loop_matches_guided_diffusion(reference_dir):
    """scripts/classifier_sample.py's cond_fn and call, cosine schedule, "ddim10", scale 3."""
    z = np.load(reference_dir / "diffusion.npz")
    model_cfg = json.loads(str(z["model_config"]))
    heads = {k: model_cfg[k] for k in ("num_heads", "num_head_channels", "image_size")}
    model = fastguide.load_checkpoint(reference_dir / "unet_cond_ss.pt", **heads)
    classifier = fastguide.load_checkpoint(reference_dir / "classifier.pt", num_head_channels=16)
    diffusion = gd.create_gaussian_diffusion(steps=1000, learn_sigma=True,
                                             noise_schedule="cosine",
                                             timestep_respacing="ddim10")
    scale = float(z["loop_classifier_scale"])

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    n = 2  # the samples are independent: two of the four keep the test fast
    y = torch.from_numpy(z["y"])[:n]
    sample = diffusion.ddim_sample_loop(
        model, (n, 3, 32, 32), noise=torch.from_numpy(z["loop_x_T"])[:n], clip_denoised=True,
        model_kwargs={"y": y}, cond_fn=cond_fn, eta=0.0)
    ref = torch.from_numpy(z["loop__cosine__ddim10__ddim_sample_loop_guided__final"])[:n]
    assert (sample - ref).abs().max() < 1e-3  # loops accumulate fp32 error (README)
