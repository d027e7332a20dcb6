"""Every user mistake of the sample / convert / demo / bench commands ends in exactly one line,
`fastguide: error: ...`, naming the option, with exit status 2 and no traceback, and is caught
before any sampling starts. Options that are accepted but change nothing are announced.
(Training and evaluation mistakes: test_cli_mistakes_train_eval.py.)"""
import json
import os

import numpy as np
import pytest
import torch

import fastguide
from fastguide.cli import main
from fastguide.pipeline import guided
from fastguide.train.arch import digits_unet


def run(argv, capsys):
    """(exit status, stdout, stderr) of the CLI run in-process."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(argv, capsys, *needles):
    code, _, err = run(argv, capsys)
    assert "Traceback" not in err, err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("fastguide: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    stray = [line for line in err.splitlines() if line and not line.startswith(
        ("usage:", " ", "fastguide: error:", "fastguide: warning:"))]
    assert not stray, err
    return errors[0]


@pytest.fixture
def no_sampling(monkeypatch):
    """Mistakes must be caught before the first sampler call."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("sampling started before the mistake was reported")
    monkeypatch.setattr(guided.GuidedSampler, "__call__", refuse)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    (d / "text.pt").write_text("these are my notes, not a checkpoint\n" * 20)
    torch.manual_seed(0)
    state = digits_unet(null_class=False).state_dict()
    torch.save({k: v for k, v in state.items() if k != "out.2.weight"}, d / "missing.pt")
    torch.save(state, d / "custom.pt")  # not a released architecture: no recorded image size
    bad_conv = dict(state, **{"input_blocks.0.0.weight": torch.randn(32, 5, 3, 3)})
    torch.save(bad_conv, d / "conv.pt")
    (d / "a_file").write_text("not a directory\n")
    fastguide.save_model(digits_unet(null_class=False), d / "nonull.safetensors")
    model = digits_unet()
    fastguide.save_model(model, d / "good.safetensors")
    config = json.loads((d / "good.json").read_text())
    for name, change in {"kind": {"kind": "os.system"}, "key": {"flux_capacitor": 1},
                         "width": {"model_channels": 10 ** 9},
                         "mult": {"channel_mult": "12"}}.items():
        sub = d / name
        sub.mkdir()
        fastguide.save_model(model, sub / "m.safetensors")
        (sub / "m.json").write_text(json.dumps(dict(config, **change)))
    return d


S = ["sample", "--model", "digits_unet", "--steps", "2", "--seeds", "0-1"]


MISTAKES = {
    # checkpoints as --model / --classifier / --upsampler and to convert
    "text file as --model": (lambda f: ["sample", "--model", f / "text.pt"],
                             ["--model", "could not read", "not a PyTorch checkpoint"]),
    "text file as --classifier": (lambda f: [*S, "--classifier", f / "text.pt"],
                                  ["--classifier", "could not read"]),
    "text file to convert": (lambda f: ["convert", f / "text.pt", f / "x.safetensors"],
                             ["could not read", "text.pt"]),
    "missing keys": (lambda f: ["sample", "--model", f / "missing.pt"],
                     ["--model", "missing ['out.2.weight']"]),
    "first conv of the wrong shape": (
        lambda f: ["sample", "--model", f / "conv.pt", "--image-size", "8",
                   "--num-head-channels", "32"],
        ["--model", "first convolution takes 5 image channels"]),
    "classifier as --model": (lambda f: ["sample", "--model", "digits_classifier"],
                              ["--model digits_classifier is a classifier", "--classifier"]),
    "UNet as --classifier": (lambda f: [*S, "--classifier", "digits_unet"],
                             ["--classifier digits_unet is a diffusion UNet"]),
    "base model as --upsampler": (lambda f: [*S, "--upsampler", "digits_unet"],
                                  ["--upsampler digits_unet is a diffusion UNet"]),
    "a directory as --model": (lambda f: ["sample", "--model", f], ["--model", "not a file"]),
    "missing .ckpt": (lambda f: ["sample", "--model", "nothing_here.ckpt"],
                      ["--model", "nothing_here.ckpt does not exist"]),
    # malformed fastguide configs
    "config: unknown kind": (lambda f: ["sample", "--model", f / "kind" / "m.safetensors"],
                             ["--model", "field 'kind' is 'os.system'"]),
    "config: unknown key": (lambda f: ["sample", "--model", f / "key" / "m.safetensors"],
                            ["--model", "unknown field 'flux_capacitor'"]),
    "config: absurd width": (lambda f: ["sample", "--model", f / "width" / "m.safetensors"],
                             ["--model", "field 'model_channels'", "1..4096"]),
    "config: string channel_mult": (lambda f: ["sample", "--model", f / "mult" / "m.safetensors"],
                                    ["--model", "field 'channel_mult'"]),
    # seeds and labels
    "seed above 2^32": (lambda f: [*S[:-2], "--seeds", "99999999999999999999"],
                        ["--seeds", "above the largest allowed"]),
    "seed 2^64-1": (lambda f: [*S[:-2], "--seeds", str(2 ** 64 - 1)], ["--seeds"]),
    "seed range too long": (lambda f: [*S[:-2], "--seeds", "0-4000000000"],
                            ["--seeds", "more than"]),
    "bad seed string": (lambda f: [*S[:-2], "--seeds", "0-x"], ["--seeds '0-x'"]),
    "reversed seed range": (lambda f: [*S[:-2], "--seeds", "9-3"], ["--seeds '9-3'"]),
    "label out of range": (lambda f: [*S, "--class-labels", "12"], ["--class-labels",
                                                                   "outside 0..9"]),
    "unknown model name": (lambda f: ["sample", "--model", "imagenet9000_cond"],
                           ["--model", "unknown model 'imagenet9000_cond'"]),
    # output
    "--out is a file": (lambda f: [*S, "--out", f / "a_file"], ["--out", "not a directory"]),
    "--out is a file, --no-resume": (lambda f: [*S, "--out", f / "a_file", "--no-resume"],
                                     ["--out", "not a directory"]),
    "convert into a missing directory": (
        lambda f: ["convert", f / "missing.pt", f / "no" / "such" / "dir" / "x.safetensors"],
        ["directory", "does not exist"]),
    "convert onto an existing file": (
        lambda f: ["convert", f / "missing.pt", f / "good.safetensors"],
        ["already exists", "--overwrite"]),
    # device
    "--device gpu": (lambda f: [*S, "--device", "gpu"], ["--device 'gpu' is not a device"]),
    # numbers
    "--rho 0": (lambda f: [*S, "--sampler", "heun", "--rho", "0"], ["--rho", "must be > 0"]),
    "--cfg-scale nan": (lambda f: [*S, "--cfg-scale", "nan"], ["--cfg-scale", "finite"]),
    "--classifier-scale nan": (lambda f: [*S, "--classifier", "digits_classifier",
                                          "--classifier-scale", "nan"],
                               ["--classifier-scale", "finite"]),
    "--eta nan": (lambda f: [*S, "--eta", "nan"], ["--eta", "finite"]),
    "--churn nan": (lambda f: [*S, "--sampler", "heun", "--churn", "nan"], ["--churn", "finite"]),
    "--rho inf": (lambda f: [*S, "--sampler", "heun", "--rho", "inf"], ["--rho", "finite"]),
    "--cfg-scale negative": (lambda f: [*S, "--cfg-scale", "-1"], ["--cfg-scale", ">= 0"]),
    "--cfg-rescale above 1": (lambda f: [*S, "--cfg-scale", "1", "--cfg-rescale", "2"],
                              ["--cfg-rescale", "[0, 1]"]),
    "--steps 0": (lambda f: [*S[:3], "--steps", "0"], ["--steps", "must be >= 1"]),
    "--batch-size 0": (lambda f: [*S, "--batch-size", "0"], ["--batch-size", "must be >= 1"]),
    "--steps above the process": (lambda f: [*S[:3], "--steps", "5000"],
                                  ["--steps", "1..1000"]),
    "--png-scale 0": (lambda f: [*S, "--png-scale", "0"], ["--png-scale"]),
    "demo --samples 0": (lambda f: ["demo", "--samples", "0"], ["--samples", "must be >= 1"]),
    "demo --batch-size 0": (lambda f: ["demo", "--batch-size", "0"],
                            ["--batch-size", "must be >= 1"]),
    "demo negative scale": (lambda f: ["demo", "--cfg-scales", "0,-2", "--out", f / "demo"],
                            ["--cfg-scales", ">= 0"]),
    "bench unknown model": (lambda f: ["bench", "--models", "imagenet_64", "--out", "-"],
                            ["--models", "unknown model 'imagenet_64'"]),
    "bench batch 0": (lambda f: ["bench", "--batches", "0", "--out", "-"], ["--batches"]),
    # guidance that cannot work
    "CFG without a null class": (lambda f: ["sample", "--model", f / "nonull.safetensors",
                                            "--cfg-scale", "1"],
                                 ["--cfg-scale needs a model trained with a null class"]),
    "classifier scale without classifier": (lambda f: [*S, "--classifier-scale", "2"],
                                            ["--classifier-scale needs a classifier"]),
    "autoguidance without weak model": (lambda f: [*S, "--autoguidance-scale", "1"],
                                        ["--autoguidance-scale needs --weak-model"]),
    "guidance interval reversed": (lambda f: [*S, "--cfg-scale", "1", "--guidance-interval",
                                              "5,1"], ["--guidance-interval", "SIGMA_LO <="]),
    "dynamic threshold above 1": (lambda f: [*S, "--dynamic-threshold", "1.5"],
                                  ["--dynamic-threshold", "(0, 1]"]),
    "unknown sampler": (lambda f: [*S, "--sampler", "ddim_plus"], ["--sampler", "invalid choice"]),
    "schedule with a discrete sampler": (lambda f: [*S, "--schedule", "karras"],
                                         ["--schedule", "does not apply to --sampler ddim"]),
    "unknown schedule": (lambda f: [*S, "--sampler", "euler", "--schedule", "fancy"],
                         ["--schedule", "fancy"]),
    "image size other than the model's": (lambda f: [*S, "--image-size", "16"],
                                           ["--model digits_unet was built for 8px",
                                            "--allow-other-size"]),
    "classifier of another image size": (
        lambda f: ["sample", "--model", f / "custom.pt", "--image-size", "16",
                   "--num-head-channels", "32", "--classifier", "digits_classifier"],
        ["--classifier digits_classifier was built for 8px images"]),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_mistake(name, files, capsys, no_sampling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a mistake writes may land in the repository
    argv, needles = MISTAKES[name]
    assert_user_error([str(a) for a in argv(files)], capsys, *needles)


def test_device_cuda_without_cuda(capsys, no_sampling):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (this one has a CUDA device)")
    assert_user_error([*S, "--device", "cuda"], capsys, "--device cuda: CUDA is not available")


# ---- the Python API raises clear exception types ---------------------------------------------

def test_load_checkpoint_errors_are_checkpoint_errors(files):
    with pytest.raises(fastguide.nn.checkpoint.CheckpointError, match="not a PyTorch checkpoint"):
        fastguide.load_checkpoint(files / "text.pt")
    with pytest.raises(fastguide.nn.checkpoint.CheckpointError, match="out.2.weight"):
        fastguide.load_checkpoint(files / "missing.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        fastguide.load_checkpoint(files / "nope.pt")
    for name, field in (("kind", "'kind'"), ("key", "'flux_capacitor'"),
                        ("width", "'model_channels'"), ("mult", "'channel_mult'")):
        with pytest.raises(fastguide.nn.checkpoint.CheckpointError, match=field):
            fastguide.load_checkpoint(files / name / "m.safetensors")


def test_save_model_into_a_missing_directory_names_it(files):
    with pytest.raises(FileNotFoundError, match="the directory .*no_such_dir does not exist"):
        fastguide.save_model(digits_unet(), files / "no_such_dir" / "m.safetensors")
    assert not list(files.glob("**/.m.safetensors*"))  # no temporary file left behind


def test_saved_files_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fastguide.save_model(digits_unet(), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    modes = {p.suffix: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {".safetensors": 0o644, ".json": 0o644}


# ---- accepted, but announced ---------------------------------------------------------------

def _sample(capsys, tmp_path, *extra, out="out"):
    code, stdout, err = run([*S, "--out", str(tmp_path / out), "--no-progress", *extra], capsys)
    assert code == 0, err
    return stdout, err


def test_classifier_without_scale_uses_the_printed_default(capsys, tmp_path):
    _, err = _sample(capsys, tmp_path, "--classifier", "digits_classifier")
    assert "without a classifier scale: using guided-diffusion's default, 1.0" in err
    assert "saturated" not in err  # ordinary guidance raises no saturation warning


def test_options_that_do_not_apply_to_the_sampler_are_announced(capsys, tmp_path):
    _, err = _sample(capsys, tmp_path, "--churn", "5", out="a")
    assert "--churn does not apply to --sampler ddim; ignored" in err
    _, err = _sample(capsys, tmp_path, "--sampler", "heun", "--eta", "0.5", out="b")
    assert "--eta does not apply to --sampler heun; ignored" in err
    _, err = _sample(capsys, tmp_path, "--upsample-steps", "5", out="c")
    assert "--upsample-steps has no effect without --upsampler" in err


def test_a_schedule_flag_that_contradicts_the_training_record_is_announced(capsys, tmp_path):
    _, err = _sample(capsys, tmp_path, "--noise-schedule", "linear")
    assert "--noise-schedule linear overrides noise_schedule=cosine" in err
    assert "training record of --model digits_unet" in err


def test_an_unknown_process_is_announced_with_the_flag_that_sets_it(capsys, tmp_path):
    torch.manual_seed(0)
    torch.save(digits_unet(null_class=False).state_dict(), tmp_path / "custom.ckpt")
    code, _, err = run(["sample", "--model", str(tmp_path / "custom.ckpt"), "--image-size", "8",
                        "--num-head-channels", "32", "--steps", "2", "--seeds", "0",
                        "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 0, err  # a checkpoint named *.ckpt is a checkpoint, not a preset name
    assert "assuming guided-diffusion's noise-schedule linear and diffusion-steps 1000" in err
    assert "--noise-schedule / --diffusion-steps" in err


def test_unconditional_samples_carry_no_labels(capsys, tmp_path):
    _sample(capsys, tmp_path, "--unconditional")
    with np.load(tmp_path / "out" / "samples_2x8x8x1.npz") as f:
        assert "arr_1" not in f.files


def test_a_clean_classifier_used_for_guidance_is_announced(capsys, tmp_path):
    _, err = _sample(capsys, tmp_path, "--classifier", "digits_clean_classifier",
                     "--classifier-scale", "1")
    assert "digits_clean_classifier was trained on clean images" in err


def test_saturating_guidance_is_announced(capsys, tmp_path):
    _, err = _sample(capsys, tmp_path, "--cfg-scale", "200", "--no-clip-denoised")
    assert "of the pixel values are saturated" in err and "--cfg-scale 200" in err


def test_outputs_of_an_earlier_run_are_refused_then_replaced(capsys, tmp_path):
    _sample(capsys, tmp_path, "--seeds", "0-5", "--per-seed-png")
    assert len(list((tmp_path / "out").glob("seed*.png"))) == 6
    assert_user_error([*S, "--out", str(tmp_path / "out")], capsys, "--out", "earlier run",
                      "--overwrite")
    stdout, _ = _sample(capsys, tmp_path, "--overwrite")
    assert "removed 8 files of the earlier run" in stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "fastguide_sample.json", "grid.png", "samples_2x8x8x1.npz"]  # no stale seed PNG left


def test_user_files_in_the_way_are_refused(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grid.png").write_text("mine")
    assert_user_error([*S, "--out", str(tmp_path / "out")], capsys, "grid.png", "--overwrite")
    assert (tmp_path / "out" / "grid.png").read_text() == "mine"


def test_per_seed_pngs_are_enlarged_by_png_scale(capsys, tmp_path):
    from PIL import Image
    _sample(capsys, tmp_path, "--per-seed-png", "--png-scale", "4")
    assert Image.open(tmp_path / "out" / "seed000000.png").size == (32, 32)


def test_version_and_help(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith(f"fastguide {fastguide.__version__} (torch")
    for command in ("sample", "convert", "demo", "train"):
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "examples:" in out, command
    code, out, _ = run(["sample", "--help"], capsys)
    assert "(default: 64)" in out and "(default: ddim)" in out
