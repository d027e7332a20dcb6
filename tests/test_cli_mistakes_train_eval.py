"""User mistakes with `fastguide train` and `fastguide eval`: each ends with exit status 2 and one
line, `fastguide: error: ...`, naming the option or file, before any work, never a traceback."""
import argparse

import numpy as np
import pytest
import torch

from fastguide.cli import build_parser
from test_cli_mistakes import run


def _run(argv, capsys):
    """(exit status, stderr, stdout)."""
    code, out, err = run(argv, capsys)
    return code, err, out


def assert_one_line_error(code, err, message):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastguide: error: "), err
    assert message in lines[0], err


# ---- train: values ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be a finite number >= 1, got 0"),
    (["--steps", "-5"], "--steps must be a finite number >= 1, got -5"),
    (["--batch-size", "0"], "--batch-size must be a finite number >= 1, got 0"),
    (["--microbatch", "-1"], "--microbatch must be a finite number >= 0, got -1"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--grad-clip=-inf"], "--grad-clip must be a finite number >= 0, got -inf"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number >= 0, got -1.0"),
    (["--p-uncond", "1"], "--p-uncond must be a finite number >= 0 and < 1, got 1.0"),
    (["--p-uncond", "-0.1"], "--p-uncond must be a finite number >= 0 and < 1, got -0.1"),
    (["--p-uncond", "nan"], "--p-uncond must be a finite number >= 0 and < 1, got nan"),
    (["--ema", "0.9,nan"], "--ema (each rate) must be a finite number >= 0 and < 1, got nan"),
    (["--ema", "1.0"], "--ema (each rate) must be a finite number >= 0 and < 1, got 1.0"),
    (["--dropout", "nan"], "--dropout must be a finite number >= 0 and < 1, got nan"),
    (["--log-every", "0"], "--log-every must be a finite number >= 1, got 0"),
    (["--save-every", "0"], "--save-every must be a finite number >= 1, got 0"),
    (["--diffusion-steps", "0"], "--diffusion-steps must be a finite number >= 1, got 0"),
    (["--seed", "-1"], "--seed must be a finite number >= 0 and < 4294967296, got -1"),
    (["--seed", "99999999999999999999"], "--seed must be a finite number >= 0 and < 4294967296"),
    (["--lr-warmup-steps", "-5"], "--lr-warmup-steps must be a finite number >= 0, got -5"),
    (["--lr-anneal-steps", "10"], "--lr-anneal-steps 10 < --steps 1000"),
    (["--num-heads", "0"], "--num-heads must be >= 1 or -1, got 0"),
    (["--image-size", "0"], "--image-size must be a finite number >= 1, got 0"),
    (["--attention-resolutions", "3"], "--attention-resolutions 3: [3] do not divide the image "
                                       "size 8"),
    (["--channel-mult", "1,x"], "--channel-mult must be comma-separated numbers"),
    (["--num-channels", "16"], "--arch digits_unet --num-channels 16 cannot be built: "
                               "num_groups=32 must divide num_channels=16"),
    (["--arch", "custom", "--image-size", "48"], "no default channel multipliers for "
                                                 "--image-size 48; give --channel-mult"),
])
def test_train_bad_values(tmp_path, capsys, extra, message):
    code, err, _ = _run(["train", "--run-dir", str(tmp_path / "r"), *extra], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "r").exists()  # nothing made


# ---- train: options that do not apply, devices, run directories ---------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--noised"], "--noised / --no-noised applies to --task classifier only"),
    (["--task", "classifier", "--learn-sigma"], "--learn-sigma applies to --task diffusion only"),
    (["--task", "classifier", "--p-uncond", "0.1"], "--p-uncond applies to --task diffusion only"),
    (["--class-from", "prefix"], "--class-from applies to image folders, not --data digits"),
    (["--resolution", "16"], "--resolution applies to image folders, not --data digits"),
    (["--init-ema", "x.pt"], "--init-ema applies only with --init"),
    (["--null-init", "mean"], "--null-init applies only with --init"),
    (["--no-null-class", "--p-uncond", "0.1"], "--p-uncond > 0 needs the null class"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    (["--init", "/nonexistent/model.pt"], "--init /nonexistent/model.pt does not exist"),
])
def test_train_options_that_do_not_apply(tmp_path, capsys, extra, message):
    code, err, _ = _run(["train", "--run-dir", str(tmp_path / "r"), *extra], capsys)
    assert_one_line_error(code, err, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_cuda_device_without_cuda(tmp_path, capsys):
    code, err, _ = _run(["train", "--run-dir", str(tmp_path / "r"), "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "--device cuda: CUDA is not available on this machine")


def test_train_run_directory_mistakes(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    code, err, _ = _run(["train", "--run-dir", str(run), "--resume"], capsys)
    assert_one_line_error(code, err, f"--resume: {run / 'checkpoint.pt'} does not exist")
    (run / "log.jsonl").write_text("{}\n")
    (run / "ema_0.99.safetensors").write_bytes(b"x")
    code, err, _ = _run(["train", "--run-dir", str(run)], capsys)
    assert_one_line_error(code, err, "holds an earlier run (ema_0.99.safetensors, log.jsonl); "
                                     "pass --resume to continue it or --overwrite to replace it")
    assert (run / "log.jsonl").read_text() == "{}\n"  # untouched
    code, err, _ = _run(["train", "--run-dir", str(run), "--resume", "--overwrite"], capsys)
    assert_one_line_error(code, err, "--resume and --overwrite contradict each other")
    (tmp_path / "file").write_text("")
    code, err, _ = _run(["train", "--run-dir", str(tmp_path / "file")], capsys)
    assert_one_line_error(code, err, "is a file, not a directory")


# ---- train: fine-tuning mistakes ----------------------------------------------------------------

def _npz(path, shape, labels=True):
    rng = np.random.default_rng(0)
    arrays = {"arr_0": rng.integers(0, 256, shape, dtype=np.uint8)}
    if labels:
        arrays["arr_1"] = np.arange(shape[0]) % 10
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("init, extra, message", [
    ("unet_cond_ss.pt", ["--num-channels", "64"],
     "--num-channels 64 does not match --init {ref}/unet_cond_ss.pt, whose model_channels is 32"),
    ("unet_cond_ss.pt", ["--num-res-blocks", "3"], "--num-res-blocks"),
    ("unet_cond_ss.pt", ["--no-learn-sigma"], "--no-learn-sigma"),
    ("unet_cond_ss.pt", ["--no-class-cond"], "--no-class-cond does not match"),
    ("unet_cond_ss.pt", ["--arch", "digits_unet"], "--arch does not apply with --init"),
    ("unet_cond_ss.pt", ["--init-ema", "{ref}/unet_uncond.pt"],
     "--init-ema {ref}/unet_uncond.pt is another architecture than --init"),
    ("classifier.pt", [], "classifier.pt is a classifier model, not one for --task diffusion"),
    ("unet_uncond.pt", ["--p-uncond", "0.1"], "needs a class-conditional diffusion model"),
    ("unet_cond_ss.pt", ["--null-init", "mean"], "--null-init applies only when --init gets a "
                                                 "null class"),
    ("unet_cond_ss.pt", ["--data", "{tmp}/small.npz", "--image-size", "32"],
     "is built for 32px square images but --data"),
    ("unet_cond_ss.pt", ["--data", "{tmp}/odd.npz"], "downsamples by 4, which does not divide "
                                                     "the 18px images of --data"),
    ("unet_cond_ss.pt", ["--data", "{tmp}/grey.npz"], "takes 3-channel images but --data"),
    ("unet_cond_ss.pt", ["--data", "{tmp}/unlabelled.npz"], "is class-conditional (10 classes) "
                                                            "but --data"),
    ("unet_cond_ss.pt", ["--data", "{tmp}/folder", "--resolution", "16", "--image-size", "32"],
     "is built for 32px square images but --data"),
])
def test_fine_tuning_mistakes(reference_dir, tmp_path, capsys, init, extra, message):
    from PIL import Image
    _npz(tmp_path / "small.npz", (4, 16, 16, 3))
    _npz(tmp_path / "odd.npz", (4, 18, 18, 3))
    _npz(tmp_path / "grey.npz", (4, 32, 32, 1))
    _npz(tmp_path / "unlabelled.npz", (4, 32, 32, 3), labels=False)
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "folder" / "cat" / "0.png")
    fill = {"ref": str(reference_dir), "tmp": str(tmp_path)}
    extra = [e.format(**fill) for e in extra]
    if "--data" not in extra:
        extra += ["--data", _npz(tmp_path / "ok.npz", (4, 32, 32, 3))]
    code, err, _ = _run(["train", "--init", str(reference_dir / init), "--num-heads", "4",
                         "--num-head-channels", "16", "--noise-schedule", "linear",
                         "--run-dir", str(tmp_path / "r"), *extra], capsys)
    assert_one_line_error(code, err, message.format(**fill))


def test_fine_tuning_a_pt_needs_its_noise_schedule(reference_dir, tmp_path, capsys):
    code, err, _ = _run(["train", "--init", str(reference_dir / "unet_cond_ss.pt"),
                         "--num-head-channels", "16", "--data",
                         _npz(tmp_path / "ok.npz", (4, 32, 32, 3)),
                         "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "has no .train.json beside it, so the process it was "
                                     "trained with is unknown: pass --noise-schedule")


# ---- eval ---------------------------------------------------------------------------------------

@pytest.fixture
def batches(tmp_path):
    rng = np.random.default_rng(0)

    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return str(tmp_path / name)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    paths = {
        "ok": save("ok.npz", arr_0=images),
        "ok2": save("ok2.npz", arr_0=images[::-1].copy()),
        "no_arr_0": save("no_arr_0.npz", images=images),
        "float": save("float.npz", arr_0=images.astype(np.float32)),
        "nchw": save("nchw.npz", arr_0=images.transpose(0, 3, 1, 2).copy()),
        "few": save("few.npz", arr_0=images[:3]),
        "big": save("big.npz", arr_0=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)),
        "half_stats": save("half_stats.npz", arr_0=images, mu=np.zeros(2048),
                           sigma=np.eye(2048)),
        "small_stats": save("small_stats.npz", arr_0=images, mu=np.zeros(10), sigma=np.eye(10),
                            mu_s=np.zeros(10), sigma_s=np.eye(10)),
    }
    (tmp_path / "text.pth").write_text("not weights")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    paths.update(text=str(tmp_path / "text.pth"), other=str(tmp_path / "other.pth"),
                 dir=str(tmp_path))
    return paths


@pytest.mark.parametrize("argv, message", [
    (["{ok}", "{ok2}"], "--inception WEIGHTS is required (or set $FASTGUIDE_INCEPTION)"),
    (["{ok}", "{ok2}", "--inception", "/nonexistent.pth"], "--inception /nonexistent.pth does "
                                                           "not exist"),
    (["/nonexistent.npz", "{ok2}", "--inception", "{text}"], "REF.npz /nonexistent.npz does not "
                                                             "exist"),
    (["{ok}", "{ok2}", "--inception", "{text}", "--batch-size", "0"],
     "--batch-size must be >= 1, got 0"),
    (["{ok}", "{ok2}", "--inception", "{text}", "--device", "gpu"], "--device gpu"),
    (["{ok}", "{ok2}", "--inception", "{text}", "--out", "/nonexistent/r.json"],
     "directory /nonexistent does not exist"),
    (["{no_arr_0}", "{ok2}", "--inception", "{text}"], "no_arr_0.npz has no arr_0 (uint8 NHWC "
                                                       "images); its arrays: ['images']"),
    (["{ok}", "{float}", "--inception", "{text}"], "arr_0 must be uint8 images [N, H, W, 3] "
                                                   "(NHWC, RGB), got float32 [5, 8, 8, 3]"),
    (["{ok}", "{nchw}", "--inception", "{text}"], "got uint8 [5, 3, 8, 8]"),
    (["{few}", "{ok2}", "--inception", "{text}"], "few.npz has 3 images; at least 4 are needed"),
    (["{ok}", "{big}", "--inception", "{text}"], "REF images are 8x8 but SAMPLE images are 16x16"),
    (["{half_stats}", "{ok2}", "--inception", "{text}"],
     "has precomputed statistics ['mu', 'sigma'] but not ['mu_s', 'sigma_s']"),
    (["{small_stats}", "{ok2}", "--inception", "{text}"], "stored mu (10,) and mu_s (10,) are "
                                                          "not Inception's (2048,) and (2023,)"),
    (["{ok}", "{ok2}", "--inception", "{text}"], "could not read"),
    (["{ok}", "{ok2}", "--inception", "{other}"], "is not the FID InceptionV3"),
])
def test_eval_mistakes(batches, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("FASTGUIDE_INCEPTION", raising=False)
    argv = [a.format(**batches) for a in argv]
    code, err, _ = _run(["eval", *argv, "--no-progress"], capsys)
    assert_one_line_error(code, err, message.format(**batches))


# ---- help ---------------------------------------------------------------------------------------

def _commands():
    parser = build_parser()
    return sorted(next(a for a in parser._actions if a.dest == "command").choices)


def _shown(action):
    """How a default reads in --help: lists comma-separated, on/off pairs as the flag."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return action.option_strings[0 if action.default else 1]
    if isinstance(action.default, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in action.default)
    return action.default


@pytest.mark.parametrize("command", _commands())
def test_every_option_has_help_and_a_shown_default(command):
    """Every subcommand (train, eval, sample, the editing commands, bench's own parser, ...)."""
    if command == "bench":  # everything after 'bench' goes to the suite's parser
        from fastguide.bench.command import build_parser as bench_parser
        sub = bench_parser()
    else:
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    text = sub.format_help()
    assert "examples:" in text
    flat = " ".join(text.split())
    for action in sub._actions:
        if action.dest == "help" or action.default is None or action.default is False:
            continue
        if action.option_strings and "default" not in action.help:  # else the help says it
            assert f"default: {_shown(action)}" in flat, (command, action.option_strings)
