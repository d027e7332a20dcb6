"""Every user mistake of `fastguide inpaint`, `img2img`, `invert` and `upsample` ends in exactly
one line, `fastguide: error: ...`, naming the argument, with exit status 2 and no traceback,
and is caught before any sampling starts. Options that are accepted but change nothing are
announced. (The sampling options these commands share with `fastguide sample` are checked in
test_cli_mistakes.py; a few are repeated here to show they are the same.)"""
import numpy as np
import pytest
import torch

import fastguide
from fastguide.editing import inversion, jobs
from fastguide.nn.unet import SuperResUNet
from test_cli_mistakes import assert_user_error, run


@pytest.fixture
def no_sampling(monkeypatch):
    """Mistakes must be caught before the first edit or inversion step."""
    def refuse(*args, **kwargs):
        raise AssertionError("editing started before the mistake was reported")
    monkeypatch.setattr(jobs.EditJob, "__call__", refuse)
    monkeypatch.setattr(inversion, "invert", refuse)


def _png(path, array):
    from PIL import Image
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("editing_mistakes")
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.savez(d / "digits.npz", digits, np.array([1, 2, 3, 4]))
    np.savez(d / "unlabelled.npz", digits)
    np.savez(d / "no_arr0.npz", images=digits)
    np.savez(d / "bad_labels.npz", digits, np.array([1, 2, 12, 4]))
    np.savez(d / "few_labels.npz", digits, np.array([1, 2]))
    np.savez(d / "float.npz", digits.astype(np.float32))
    np.savez(d / "big.npz", rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8),
             np.array([1, 2, 3, 4]))
    _png(d / "grey.png", digits[0, ..., 0])
    _png(d / "rgb.png", np.repeat(digits[0], 3, axis=-1))
    _png(d / "big.png", np.zeros((16, 16), np.uint8))
    (d / "text.png").write_text("not an image\n")
    half = np.zeros((8, 8), np.uint8)
    half[:, 4:] = 255
    _png(d / "mask.png", half)
    _png(d / "mask16.png", np.zeros((16, 16), np.uint8))
    grey = half.copy()
    grey[0, :2] = (100, 200)
    _png(d / "mask_grey.png", grey)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    _png(d / "mask_colour.png", colour)
    (d / "masks3").mkdir()
    for k in range(3):
        _png(d / "masks3" / f"{k}.png", half)
    (d / "empty").mkdir()
    (d / "a_file").write_text("not a directory\n")
    torch.manual_seed(0)
    sr = SuperResUNet(image_size=32, in_channels=1, model_channels=32, out_channels=1,
                      num_res_blocks=1, attention_resolutions=(), channel_mult=(1, 2),
                      num_classes=10)
    fastguide.save_model(sr, d / "sr.safetensors")
    return d


def inp(f, *extra):
    return ["inpaint", "digits_unet", "--image", f / "digits.npz", "--mask", f / "mask.png",
            "--steps", "4", "--jump-count", "1", *extra]


def i2i(f, *extra):
    return ["img2img", "digits_unet", "--image", f / "digits.npz", "--steps", "4", *extra]


def inv(f, *extra):
    return ["invert", "digits_unet", "--image", f / "digits.npz", "--steps", "4", *extra]


def up(f, *extra):
    return ["upsample", f / "sr.safetensors", "--base-samples", f / "digits.npz", "--steps", "2",
            *extra]


MISTAKES = {
    # masks
    "mask of the wrong size": (lambda f: inp(f, "--mask", f / "mask16.png"),
                               ["--mask", "mask16.png", "16x16 but the images are 8x8"]),
    "mask not binary": (lambda f: inp(f, "--mask", f / "mask_grey.png"),
                        ["--mask", "is not binary: 2 of 64 pixels", "values 100..200",
                         "--mask-threshold"]),
    "mask in colour": (lambda f: inp(f, "--mask", f / "mask_colour.png"),
                       ["--mask", "must be grey"]),
    "3 masks for 4 images": (lambda f: inp(f, "--mask", f / "masks3"),
                             ["--mask", "3 masks for 4 images"]),
    "mask that does not exist": (lambda f: inp(f, "--mask", f / "nope.png"),
                                 ["--mask", "nope.png does not exist"]),
    "mask threshold negative": (lambda f: inp(f, "--mask-threshold", "-1"),
                                ["--mask-threshold", ">= 0"]),
    # images
    "image of the wrong size": (lambda f: inp(f, "--image", f / "big.png"),
                                ["--image", "16x16 but the model takes 8x8"]),
    "npz of the wrong size": (lambda f: i2i(f, "--image", f / "big.npz"),
                              ["--image", "16x16 but the model takes 8x8"]),
    "RGB image for a grey model": (lambda f: inp(f, "--image", f / "rgb.png"),
                                   ["--image", "3 channels (RGB) but the model takes 1"]),
    "npz without arr_0": (lambda f: inp(f, "--image", f / "no_arr0.npz"),
                          ["--image", "no_arr0.npz has no arr_0", "images"]),
    "float npz": (lambda f: inp(f, "--image", f / "float.npz"), ["--image", "must be uint8"]),
    "arr_1 of the wrong length": (lambda f: inp(f, "--image", f / "few_labels.npz"),
                                  ["--image", "arr_1 must hold one integer label per image"]),
    "arr_1 label out of range": (lambda f: inp(f, "--image", f / "bad_labels.npz"),
                                 ["--image", "labels (arr_1) [12] are outside 0..9"]),
    "not an image": (lambda f: inp(f, "--image", f / "text.png"),
                     ["--image", "text.png: cannot read it as an image"]),
    "image that does not exist": (lambda f: i2i(f, "--image", f / "nope.npz"),
                                  ["--image", "nope.npz does not exist"]),
    "empty image folder": (lambda f: i2i(f, "--image", f / "empty"),
                           ["--image", "holds no images"]),
    "no labels for a conditional model": (
        lambda f: inp(f, "--image", f / "grey.png"),
        ["--class-labels are needed", "class-conditional (10 classes)", "--unconditional"]),
    "class label out of range": (lambda f: inp(f, "--class-labels", "12"),
                                 ["--class-labels [12] are outside 0..9"]),
    "repeated seeds": (lambda f: inp(f, "--seeds", "3,3"), ["--seeds repeats [3]"]),
    "bad seeds": (lambda f: inp(f, "--seeds", "2-1"), ["--seeds '2-1'"]),
    # RePaint's jumps
    "jump length of the step count": (lambda f: inp(f, "--steps", "5", "--jump-length", "5"),
                                      ["--jump-length 5 does not fit a schedule of 5 steps"]),
    "jump length above the step count": (
        lambda f: inp(f, "--sampler", "heun", "--steps", "3", "--jump-length", "10"),
        ["--jump-length 10 does not fit a schedule of 3 steps"]),
    "jump length 0": (lambda f: inp(f, "--jump-length", "0"), ["--jump-length", ">= 1"]),
    "jump count negative": (lambda f: inp(f, "--jump-count", "-2"), ["--jump-count", ">= 0"]),
    "unknown method": (lambda f: inp(f, "--method", "magic"), ["--method", "invalid choice"]),
    # strength
    "strength above 1": (lambda f: i2i(f, "--strength", "1.5"),
                         ["--strength", "must be in [0, 1], got '1.5'"]),
    "strength below 0": (lambda f: i2i(f, "--strength", "-0.1"), ["--strength", "[0, 1]"]),
    "strength nan": (lambda f: i2i(f, "--strength", "nan"), ["--strength", "finite"]),
    # inversion
    "inverting a stochastic sampler": (lambda f: inv(f, "--sampler", "ddpm"),
                                       ["--sampler ddpm cannot be inverted", "ddim", "heun"]),
    "inverting dpmpp_2m": (lambda f: inv(f, "--sampler", "dpmpp_2m"),
                           ["--sampler dpmpp_2m cannot be inverted"]),
    "inverting ddim with eta": (lambda f: inv(f, "--eta", "0.5"),
                                ["--eta must be 0 for inversion"]),
    "inverting heun with churn": (lambda f: inv(f, "--sampler", "heun", "--churn", "2"),
                                  ["--churn must be 0 for inversion"]),
    "seeds for invert": (lambda f: inv(f, "--seeds", "0-3"), ["unrecognized arguments"]),
    # super-resolution
    "base samples of the wrong resolution": (
        lambda f: up(f, "--base-samples", f / "big.npz"),
        ["--base-samples", "16x16 but the upsampler (8px -> 32px) takes 8x8"]),
    "base samples of another --low-res-size": (
        lambda f: up(f, "--low-res-size", "16"),
        ["--base-samples", "8x8 but the upsampler (16px -> 32px) takes 16x16"]),
    "base samples without arr_0": (lambda f: up(f, "--base-samples", f / "no_arr0.npz"),
                                   ["--base-samples", "has no arr_0"]),
    "base samples without labels": (lambda f: up(f, "--base-samples", f / "unlabelled.npz"),
                                    ["--class-labels are needed"]),
    "base model as the upsampler": (
        lambda f: ["upsample", "digits_unet", "--base-samples", f / "digits.npz"],
        ["MODEL digits_unet is a diffusion UNet", "super-resolution UNet", "inpaint"]),
    "upsampler as the base model": (lambda f: ["inpaint", f / "sr.safetensors", "--image",
                                               f / "digits.npz", "--mask", f / "mask.png"],
                                    ["MODEL", "is a super-resolution UNet", "upsample"]),
    "classifier option for upsample": (lambda f: up(f, "--classifier", "digits_classifier"),
                                       ["unrecognized arguments: --classifier"]),
    # shared with `fastguide sample`
    "cfg scale negative": (lambda f: inp(f, "--cfg-scale", "-1"), ["--cfg-scale", ">= 0"]),
    "steps above the process": (lambda f: i2i(f, "--steps", "5000"), ["--steps", "1..1000"]),
    "--out is a file": (lambda f: inp(f, "--out", f / "a_file"), ["--out", "not a directory"]),
    "missing --mask": (lambda f: ["inpaint", "digits_unet", "--image", f / "digits.npz"],
                       ["the following arguments are required: --mask"]),
    "missing MODEL": (lambda f: ["img2img", "--image", f / "digits.npz"],
                      ["the following arguments are required: MODEL"]),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_mistake(name, files, capsys, no_sampling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a mistake writes may land in the repository
    argv, needles = MISTAKES[name]
    assert_user_error([str(a) for a in argv(files)], capsys, *needles)


# ---- accepted, but announced -------------------------------------------------------------------

def _ok(argv, capsys):
    code, out, err = run([str(a) for a in argv] + ["--no-progress"], capsys)
    assert code == 0, err
    return out, err


def test_jump_options_with_the_baseline_are_announced(files, capsys, tmp_path):
    _, err = _ok(inp(files, "--method", "replace", "--jump-length", "2", "--out", tmp_path / "o"),
                 capsys)
    assert "--jump-length does not apply to --method replace; ignored" in err


def test_a_thresholded_mask_says_how(files, capsys, tmp_path):
    _, err = _ok(inp(files, "--mask", files / "mask_grey.png", "--mask-threshold", "150",
                     "--out", tmp_path / "o"), capsys)
    assert "thresholded at 150 (pixels >= 150 are inpainted): 33 of 64 pixels" in err


def test_a_default_jump_length_too_long_for_the_steps_is_shortened(files, capsys, tmp_path):
    _, err = _ok(inp(files, "--out", tmp_path / "o"), capsys)
    assert "the default jump length 10 does not fit 4 steps; using 3" in err


def test_sampler_options_that_do_not_apply_are_announced(files, capsys, tmp_path):
    _, err = _ok(i2i(files, "--churn", "3", "--out", tmp_path / "o"), capsys)
    assert "--churn does not apply to --sampler ddim; ignored" in err


def test_more_images_than_seeds_is_announced(files, capsys, tmp_path):
    _, err = _ok(i2i(files, "--seeds", "0-1", "--out", tmp_path / "o"), capsys)
    assert "4 images but 2 seeds: only the first 2 images are edited" in err


def test_outputs_of_an_earlier_run_are_refused_then_replaced(files, capsys, tmp_path):
    _ok(i2i(files, "--out", tmp_path / "o", "--per-seed-png"), capsys)
    assert_user_error([str(a) for a in i2i(files, "--out", tmp_path / "o")], capsys,
                      "--out", "earlier run", "--overwrite")
    out, _ = _ok(i2i(files, "--out", tmp_path / "o", "--overwrite"), capsys)
    assert "removed 7 files of the earlier run" in out  # npz, grid, compare, 4 seed PNGs
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "compare.png", "fastguide_sample.json", "grid.png", "samples_4x8x8x1.npz"]


def test_help_of_every_editing_command(capsys):
    for command in ("inpaint", "img2img", "invert", "upsample"):
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "examples:" in out and "MODEL" in out, command
    code, out, _ = run(["inpaint", "--help"], capsys)
    assert "--jump-length" in out and "--cfg-scale" in out and "(default: repaint)" in out
