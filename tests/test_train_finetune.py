"""Fine-tuning (fastguide train --init) on guided-diffusion's reference UNet, the null-class
extension, the learning-rate schedule, flips, run directories, and no host sync per microbatch
with the uniform timestep sampler."""
import json

import numpy as np
import pytest
import torch

import fastguide
from conftest import load_reference_model
from fastguide.cli import build_parser, main
from fastguide.diffusion import create_gaussian_diffusion
from fastguide.train import Trainer, TrainOptions, digits_dataset
from fastguide.train.arch import digits_unet
from fastguide.train.checkpoint import load_training_state
from fastguide.train.finetune import load_init
from fastguide.train.run import build_trainer

HEADS = ["--num-heads", "4", "--num-head-channels", "16"]  # unet_cond_ss's (not in a state dict)


@pytest.fixture(scope="module")
def labelled_32px(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, arr_0=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
             arr_1=np.arange(12) % 10)
    return path


def _reference_out(reference_dir, model):
    ref = np.load(reference_dir / "unet_cond_ss.npz")
    with torch.no_grad():
        return model(torch.from_numpy(ref["x"]), torch.from_numpy(ref["timesteps"]),
                     torch.from_numpy(ref["y"])), torch.from_numpy(ref["out"])


def test_fine_tune_the_reference_unet_save_reload_resume(reference_dir, labelled_32px, tmp_path,
                                                          capsys):
    ckpt = reference_dir / "unet_cond_ss.pt"
    run = tmp_path / "run"
    argv = ["train", "--init", str(ckpt), *HEADS, "--noise-schedule", "linear", "--data",
            str(labelled_32px), "--steps", "3", "--batch-size", "4", "--lr", "1e-4",
            "--lr-warmup-steps", "2", "--grad-clip", "1.0", "--random-flip", "--ema", "0.9",
            "--precision", "fp32", "--log-every", "1", "--save-every", "3", "--no-progress",
            "--run-dir", str(run)]
    assert main(argv) == 0
    state = load_training_state(run / "checkpoint.pt")
    assert state["step"] == 3
    # Save, reload, compare: the exports are the checkpoint's weights, bit for bit.
    reloaded = fastguide.load_checkpoint(run / "model.safetensors")
    ema = fastguide.load_checkpoint(run / "ema_0.9.safetensors")
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, state["model"][k]), k
    for k, v in ema.named_parameters():
        assert torch.equal(v, state["ema"]["0.9"][k]), k
    # Trained: the weights moved, but not far (lr 1e-4, 3 steps); the EMA lags behind.
    original = dict(load_reference_model(reference_dir, "unet_cond_ss.pt",
                                         str(np.load(reference_dir / "unet_cond_ss.npz")["config"]))
                    .named_parameters())
    moved = {k: (v - original[k]).abs().max().item() for k, v in reloaded.named_parameters()}
    assert 0 < max(moved.values()) < 3e-4 * 3
    ema_moved = max((v - original[k]).abs().max().item() for k, v in ema.named_parameters())
    assert 0 < ema_moved < max(moved.values())
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([5e-5, 1e-4, 1e-4])  # warm-up over 2 steps
    info = json.loads((run / "model.train.json").read_text())
    assert info["init"] == str(ckpt) and info["diffusion"] == {
        "steps": 1000, "noise_schedule": "linear", "learn_sigma": True}
    # The same command again refuses to touch the run; --resume continues it.
    assert _code(argv) == 2 and "holds an earlier run" in capsys.readouterr().err
    assert main([*argv, "--resume", "--steps", "4"]) == 0
    assert load_training_state(run / "checkpoint.pt")["step"] == 4
    capsys.readouterr()
    assert main([*argv, "--resume", "--steps", "4"]) == 0
    assert "already finished: its checkpoint is at step 4 of --steps 4" in capsys.readouterr().out


def _code(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("null_init", ["zero", "mean"])
def test_null_class_extension_keeps_conditional_outputs_bit_identical(reference_dir, null_init):
    config = str(np.load(reference_dir / "unet_cond_ss.npz")["config"])
    original = load_reference_model(reference_dir, "unet_cond_ss.pt", config)
    out, expected = _reference_out(reference_dir, original)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)  # guided-diffusion's model
    heads = {"num_heads": 4, "num_head_channels": 16}
    extended, added = load_init(reference_dir / "unet_cond_ss.pt", heads, null_class=True,
                                null_init=null_init)
    assert added and extended.null_label == 10 and extended.label_emb.weight.shape[0] == 11
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.arange(10) * 99
    y = torch.arange(10)
    with torch.no_grad():
        assert torch.equal(extended(x, t, y), original(x, t, y))
        null = extended(x, t, torch.full_like(y, 10))
    emb = extended.label_emb.weight
    if null_init == "zero":
        assert torch.equal(emb[10], torch.zeros_like(emb[10]))
    else:
        torch.testing.assert_close(emb[10], original.label_emb.weight.mean(dim=0))
    assert not torch.allclose(null, extended(x, t, y).detach())


def test_the_command_builds_the_extended_model(reference_dir, labelled_32px, tmp_path):
    """Through the command's own path: --p-uncond adds the null class, the EMA starts from
    --init-ema, and the conditional outputs are the checkpoint's before any step."""
    args = build_parser().parse_args([
        "train", "--init", str(reference_dir / "unet_cond_ss.pt"), "--init-ema",
        str(reference_dir / "unet_cond_ss.pt"), *HEADS, "--noise-schedule", "linear",
        "--p-uncond", "0.1", "--null-init", "mean", "--data", str(labelled_32px),
        "--precision", "fp32", "--run-dir", str(tmp_path / "r")])
    trainer = build_trainer(args)
    config = str(np.load(reference_dir / "unet_cond_ss.npz")["config"])
    original = load_reference_model(reference_dir, "unet_cond_ss.pt", config)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([0, 500, 999]), torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(trainer.model.eval()(x, t, y), original(x, t, y))
    assert trainer.model.null_label == 10 and trainer.opts.p_uncond == 0.1
    for shadow, p in zip(trainer.ema.shadows[0.9999], trainer.model.parameters()):
        assert torch.equal(shadow, p)


# ---- the trainer's new options (digits, fast) -------------------------------------------------

DIFFUSION = create_gaussian_diffusion(steps=1000, noise_schedule="cosine")


def _trainer(tmp, **kw):
    torch.manual_seed(0)
    opts = TrainOptions(run_dir=str(tmp), progress=False, precision="fp32", **kw)
    return Trainer(digits_unet(), digits_dataset(), DIFFUSION, opts)


def test_learning_rate_warmup_and_guided_diffusion_anneal(tmp_path):
    t = _trainer(tmp_path, lr=1e-3, lr_warmup_steps=4, lr_anneal_steps=10, batch_size=4)
    expected = [1e-3 * min(1, (s + 1) / 4) * (1 - s / 10) for s in range(10)]
    assert [t.learning_rate(s) for s in range(10)] == pytest.approx(expected)
    t.train_step()
    t.train_step()
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(expected[1])


def test_random_flip_mirrors_half_and_changes_nothing_else(tmp_path):
    plain = _trainer(tmp_path / "a", batch_size=400)
    flips = _trainer(tmp_path / "b", batch_size=400, random_flip=True)
    x0, y, t, w, noise = plain.batch(3)
    fx0, fy, ft, fw, fnoise = flips.batch(3)
    assert torch.equal(y, fy) and torch.equal(t, ft) and torch.equal(noise, fnoise)
    same = (fx0 == x0).flatten(1).all(1)
    mirrored = (fx0 == x0.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    flipped = (mirrored & ~same).sum().item()
    assert 150 < flipped < 250  # about half of 400 (some digits are symmetric)


def test_run_directory_protection(tmp_path):
    _trainer(tmp_path, steps=1, batch_size=4, save_every=1, ema_rates=(0.5,)).run()
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        _trainer(tmp_path, steps=1, batch_size=4)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        _trainer(tmp_path / "empty", resume=True)
    t = _trainer(tmp_path, steps=1, batch_size=4, save_every=1, ema_rates=(0.9,), overwrite=True)
    assert (tmp_path / "ema_0.5.safetensors").exists()  # nothing deleted before run()
    t.run()
    assert not (tmp_path / "ema_0.5.safetensors").exists()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1


class _SyncCounter:
    """Counts the Python-level calls that make a CUDA host wait for the device."""
    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(real))

    def _counting(self, real):
        def call(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)
        return call


def test_no_host_sync_per_microbatch_with_the_uniform_sampler(tmp_path, monkeypatch):
    """Host reads during one step, with 1 and with 4 microbatches: the same number, so none per
    microbatch (on a CPU the count includes reads of host tensors, e.g. Adam's step counts,
    which are no device sync). The loss-aware sampler's history is what the uniform one skips."""
    counts = {}
    for sampler in ("uniform", "loss-second-moment"):
        for micro in (8, 2):
            t = _trainer(tmp_path / f"{sampler}{micro}", batch_size=8, microbatch=micro,
                         schedule_sampler=sampler)
            t.train_step()  # warm-up (lazy initialisations)
            counter = _SyncCounter(monkeypatch)
            t.train_step()
            counts[sampler, micro] = counter.count
            monkeypatch.undo()
    assert counts["uniform", 2] == counts["uniform", 8]
    assert counts["loss-second-moment", 2] == counts["loss-second-moment", 8]
    assert counts["loss-second-moment", 8] > counts["uniform", 8]  # the counter sees syncs


def test_guided_diffusion_model_flags_build_the_model_they_name(tmp_path):
    args = build_parser().parse_args([
        "train", "--arch", "custom", "--image-size", "8", "--num-channels", "32",
        "--channel-mult", "1,2", "--attention-resolutions", "4", "--num-head-channels", "16",
        "--num-res-blocks", "1", "--learn-sigma", "--no-use-scale-shift-norm",
        "--resblock-updown", "--dropout", "0.1", "--p-uncond", "0.2", "--precision", "fp32",
        "--run-dir", str(tmp_path / "r")])
    cfg = build_trainer(args).model.config
    expected = dict(kind="unet", image_size=8, in_channels=1, model_channels=32, out_channels=2,
                    num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 2),
                    num_head_channels=16, num_heads=4, use_scale_shift_norm=False,
                    resblock_updown=True, dropout=0.1, num_classes=10, null_class=True)
    assert {k: cfg[k] for k in expected} == expected
    # On a digits model the same flags change only what they name.
    args = build_parser().parse_args(["train", "--num-channels", "64", "--precision", "fp32",
                                      "--run-dir", str(tmp_path / "d")])
    cfg = build_trainer(args).model.config
    assert cfg["model_channels"] == 64 and cfg["channel_mult"] == (1, 2) and cfg["image_size"] == 8
