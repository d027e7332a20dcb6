"""The fastguide command: sample (format, batch-size and rank independence, upsampler),
convert, and clear errors for bad arguments."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastguide
from fastguide.cli import main
from fastguide.cliutil import parse_int_ranges
from fastguide.train.arch import digits_unet


def _run(argv, capsys):
    """(exit status, stderr) of the CLI run in-process."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _sample(tmp, name, *extra, capsys):
    out = tmp / name
    code, err = _run(["sample", "--model", "digits_unet", "--steps", "5", "--out", str(out),
                      *extra], capsys)
    assert code == 0, err
    (npz,) = out.glob("samples_*.npz")
    with np.load(npz) as f:
        return f["arr_0"], f["arr_1"], npz.name


def test_seed_parsing():
    assert parse_int_ranges("0-3,10,7-8") == [0, 1, 2, 3, 10, 7, 8]
    assert parse_int_ranges("5") == [5]


@pytest.mark.parametrize("argv, message", [
    # sample / convert / demo / bench mistakes: test_cli_mistakes.py
    (["sample", "--model", "/nonexistent/model.pt"], "checkpoint /nonexistent/model.pt does not exist"),
    (["convert", "/nonexistent.pt", "x.safetensors"], "does not exist"),
    (["train", "--run-dir", "r", "--data", "/nonexistent.npz"], "does not exist"),
    (["train", "--run-dir", "r", "--arch", "nope"], "unknown architecture 'nope'"),
    (["train", "--run-dir", "r", "--task", "classifier", "--p-uncond", "0.1"],
     "applies to --task diffusion only"),
    (["train", "--run-dir", "r", "--task", "classifier", "--arch", "digits_unet"],
     "is a unet model, not one for --task classifier"),
])
def test_bad_arguments_give_clear_messages(argv, message, capsys):
    code, err = _run(argv, capsys)
    assert code == 2
    assert err.startswith("fastguide: error:") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("shape, message", [
    ((4, 8, 8, 3), "digits_unet takes 1-channel images but --data"),
    ((4, 16, 16, 1), "built for 8px square images but --data"),
])
def test_train_data_that_does_not_fit_the_arch(tmp_path, capsys, shape, message):
    np.savez(tmp_path / "d.npz", arr_0=np.zeros(shape, np.uint8), arr_1=np.arange(4))
    code, err = _run(["train", "--run-dir", str(tmp_path / "r"), "--data",
                      str(tmp_path / "d.npz")], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_bench_without_suite_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastguide.bench", None)  # import fails
    code, err = _run(["bench"], capsys)
    assert code == 2 and "benchmark suite" in err


def test_sample_format_and_batch_size_independence(tmp_path, capsys):
    a, la, name = _sample(tmp_path, "a", "--seeds", "0-11,40", "--batch-size", "13",
                          "--cfg-scale", "1", capsys=capsys)
    b, lb, _ = _sample(tmp_path, "b", "--seeds", "0-11,40", "--batch-size", "4",
                       "--cfg-scale", "1", capsys=capsys)
    assert name == "samples_13x8x8x1.npz"
    assert a.dtype == np.uint8 and a.shape == (13, 8, 8, 1)
    np.testing.assert_array_equal(la, [s % 10 for s in [*range(12), 40]])
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "a" / "grid.png").exists()
    # A different seed gives a different image (the comparison above can fail).
    assert not np.array_equal(a[0], a[1])


def test_classifier_guided_sample_batch_independent(tmp_path, capsys):
    args = ["--seeds", "0-5", "--classifier", "digits_classifier", "--classifier-scale", "4",
            "--class-labels", "3", "--per-seed-png"]
    a, la, _ = _sample(tmp_path, "a", *args, "--batch-size", "6", capsys=capsys)
    b, _, _ = _sample(tmp_path, "b", *args, "--batch-size", "2", capsys=capsys)
    np.testing.assert_array_equal(la, [3] * 6)
    np.testing.assert_array_equal(a, b)
    assert len(list((tmp_path / "a").glob("seed*.png"))) == 6


def test_torchrun_shards_equal_single_process(tmp_path, capsys):
    single, _, _ = _sample(tmp_path, "one", "--seeds", "0-9", "--batch-size", "3", capsys=capsys)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "fastguide", "sample", "--model",
                        "digits_unet", "--steps", "5", "--seeds", "0-9", "--batch-size", "3",
                        "--out", str(tmp_path / "two")], env=env, capture_output=True,
                       text=True, timeout=900)  # a hang guard, not a time limit
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on 2 rank(s)" in r.stdout
    with np.load(tmp_path / "two" / "samples_10x8x8x1.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], single)


def test_convert_guided_diffusion_pt(tmp_path, capsys):
    torch.manual_seed(0)
    model = digits_unet(null_class=False).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    code, err = _run(["convert", str(tmp_path / "m.pt"), str(tmp_path / "m.safetensors"),
                      "--num-head-channels", "32", "--image-size", "8"], capsys)
    assert code == 0, err
    loaded = fastguide.load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config["num_head_channels"] == 32
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 500]), torch.tensor([1, 7])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y))


def test_upsampler_two_stage(tmp_path, capsys):
    # A random super-res model 8 -> 16 stands in for ADM-U: the pipeline's shapes and its
    # dependence on the first stage are what is tested.
    torch.manual_seed(0)
    sr = fastguide.nn.SuperResUNet(16, 1, 32, 1, 1, (), channel_mult=(1, 2), num_classes=10)
    torch.nn.init.normal_(sr.out[2].weight, std=0.01)  # not the zero init: output depends on x
    fastguide.save_model(sr, tmp_path / "sr.safetensors")
    common = ["--seeds", "0-3", "--upsampler", str(tmp_path / "sr.safetensors"),
              "--upsample-steps", "3", "--noise-schedule", "linear"]
    a, _, name = _sample(tmp_path, "a", *common, capsys=capsys)
    b, _, _ = _sample(tmp_path, "b", *common, "--cfg-scale", "3", capsys=capsys)
    assert name == "samples_4x16x16x1.npz" and a.shape == (4, 16, 16, 1)
    assert not np.array_equal(a, b)  # the guided first stage conditions the second


def test_heun_sampler_batch_independent(tmp_path, capsys):
    args = ["--seeds", "0-4", "--sampler", "heun", "--cfg-scale", "1"]
    a, _, _ = _sample(tmp_path, "a", *args, "--batch-size", "5", capsys=capsys)
    b, _, _ = _sample(tmp_path, "b", *args, "--batch-size", "2", capsys=capsys)
    np.testing.assert_array_equal(a, b)
    assert a.std() > 20  # digits on black, not a blank image
    # EDM's stochastic churn: its noise also comes from the per-seed generators.
    churn = [*args, "--churn", "40", "--s-min", "0.05", "--s-max", "50"]
    c, _, _ = _sample(tmp_path, "c", *churn, "--batch-size", "5", capsys=capsys)
    d, _, _ = _sample(tmp_path, "d", *churn, "--batch-size", "3", capsys=capsys)
    # Same noise; batched convolutions may round differently per batch size, and a value at a
    # rounding edge can land one level off (measured: 1 of 320).
    diff = np.abs(c.astype(int) - d.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert np.abs(a.astype(int) - c.astype(int)).max() > 50  # churn changes the images


class _RecordedNoise:
    """Stands in for StackedRandomGenerator: hands out guided-diffusion's recorded draws
    (x_T first, then one per step, in loop order)."""

    def __init__(self, draws):
        self.draws = iter(draws)

    def __call__(self, seeds, device):
        return self

    def randn_like(self, x):
        d = next(self.draws)
        assert d.shape == x.shape
        return d.to(x.device, x.dtype)


def test_sample_guided_diffusion_checkpoints_matches_reference(reference_dir, ref, tmp_path,
                                                               monkeypatch, capsys):
    # The drop-in use: guided-diffusion's own .pt files through `fastguide sample`, ADM-G
    # (p_sample_loop, respacing "25", classifier scale 3), against the loop guided-diffusion ran.
    p = "loop__linear__25__p_sample_loop_guided__"
    draws = [torch.from_numpy(ref["loop_x_T"]), *torch.from_numpy(ref[p + "step_noise"])]
    monkeypatch.setattr("fastguide.pipeline.guided.StackedRandomGenerator", _RecordedNoise(draws))
    labels = ",".join(str(int(v)) for v in ref["y"])
    code, err = _run(["sample", "--model", str(reference_dir / "unet_cond_ss.pt"),
                      "--image-size", "32", "--num-head-channels", "16", "--classifier",
                      str(reference_dir / "classifier.pt"), "--classifier-num-head-channels",
                      "16", "--classifier-scale", str(float(ref["loop_classifier_scale"])),
                      "--sampler", "ddpm", "--steps", "25", "--noise-schedule", "linear",
                      "--seeds", "0-3", "--class-labels", labels, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    with np.load(tmp_path / "samples_4x32x32x3.npz") as f:
        images, written_labels = f["arr_0"], f["arr_1"]
    np.testing.assert_array_equal(written_labels, ref["y"])
    expected = ((ref[p + "final"] + 1) * 127.5).round().clip(0, 255).transpose(0, 2, 3, 1)
    diff = np.abs(images.astype(np.int64) - expected.astype(np.int64))
    # The float samples agree to 1e-3 (test_sampling_reference); a value within that of a
    # rounding edge may land on the neighbouring integer.
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_non_finite_samples_are_an_error_not_black_images(tmp_path, monkeypatch, capsys):
    from fastguide.pipeline import guided as gen

    real_call = gen.GuidedSampler.__call__

    def diverging(self, seeds, labels, device="cpu", on_step=None, **kw):
        x = real_call(self, seeds, labels, device, on_step, **kw)
        x[seeds.index(2)] = float("nan")  # as a diverged sampler would
        return x

    monkeypatch.setattr(gen.GuidedSampler, "__call__", diverging)
    code, err = _run(["sample", "--model", "digits_unet", "--steps", "2", "--seeds", "0-3",
                      "--out", str(tmp_path)], capsys)
    assert code == 2 and "NaN or inf for seeds [2]" in err
    assert not list(tmp_path.glob("*.npz"))


def test_killed_sample_run_resumes_from_finished_batches(tmp_path, monkeypatch, capsys):
    from fastguide.pipeline import guided as gen

    real_call, calls = gen.GuidedSampler.__call__, []

    def counted(self, seeds, labels, device="cpu", on_step=None, **kw):
        calls.append(list(seeds))
        if fail_at and len(calls) == fail_at:
            raise RuntimeError("killed")  # as a crash or a lost node would end the run
        return real_call(self, seeds, labels, device, on_step, **kw)

    monkeypatch.setattr(gen.GuidedSampler, "__call__", counted)
    argv = ["sample", "--model", "digits_unet", "--steps", "3", "--seeds", "0-5",
            "--batch-size", "2", "--cfg-scale", "1", "--out", str(tmp_path / "run")]
    fail_at = 3
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    assert len(list((tmp_path / "run" / ".partial").rglob("*.npz"))) == 2
    calls.clear()
    fail_at = 0
    assert main(argv) == 0
    assert calls == [[4, 5]]  # only the batch that never finished is sampled again
    assert not (tmp_path / "run" / ".partial").exists()
    # The resumed output equals an uninterrupted run; a changed option reuses nothing.
    fresh, _, _ = _sample(tmp_path, "fresh", "--seeds", "0-5", "--batch-size", "2",
                          "--cfg-scale", "1", "--steps", "3", "--no-resume", capsys=capsys)
    with np.load(tmp_path / "run" / "samples_6x8x8x1.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], fresh)
    calls.clear()
    fail_at = 3  # leaves two finished batches of the cfg-scale 1 run
    with pytest.raises(RuntimeError):
        main([*argv, "--overwrite"])
    calls.clear()
    fail_at = 0
    assert main([*argv[:-2], "--cfg-scale", "2", "--out", str(tmp_path / "run"),
                 "--overwrite"]) == 0
    assert len(calls) == 3
