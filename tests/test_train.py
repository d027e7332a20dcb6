"""fastguide.train: the loss falls, EMA, label dropout, gloo ranks = one process, and a run
killed while writing a checkpoint resumes to exactly the uninterrupted state."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastguide.diffusion import create_gaussian_diffusion
from fastguide.train import EMA, Trainer, TrainOptions, digits_dataset
from fastguide.train.arch import digits_classifier, digits_unet
from fastguide.train.checkpoint import load_training_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Guards against a hung subprocess, not speed limits: a loaded 2-core CI machine is slow.
HANG = 1800
DIFFUSION = create_gaussian_diffusion(steps=1000, noise_schedule="cosine")


def _trainer(tmp, **kw):
    """A digits trainer; fp32 unless asked, since bf16 is emulated (slow) on most CPUs."""
    kw.setdefault("precision", "fp32")
    torch.manual_seed(0)
    task = kw.get("task", "diffusion")
    model = digits_unet() if task == "diffusion" else digits_classifier()
    opts = TrainOptions(run_dir=str(tmp), progress=False, **kw)
    return Trainer(model, digits_dataset(), DIFFUSION, opts)


def test_short_cpu_run_lowers_the_loss(tmp_path):
    t = _trainer(tmp_path, steps=60, batch_size=32, lr=5e-4, log_every=20, save_every=60,
                 p_uncond=0.1, ema_rates=(0.9,))
    t.run()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    # ε-prediction starts at MSE ≈ 1 (zero-initialised output); measured ≈ 0.3 after 60 steps.
    assert rows[0]["loss"] > 0.6 and rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert {f"loss_q{q}" for q in range(4)} <= set(rows[-1])
    assert (tmp_path / "ema_0.9.safetensors").exists()
    info = json.loads((tmp_path / "ema_0.9.train.json").read_text())
    assert info["step"] == 60 and info["task"] == "diffusion"


def test_ema_matches_formula():
    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, [0.5, 0.9])
    start = [p.detach().clone() for p in lin.parameters()]
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(1.0)
    ema.update(lin)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(2.0)
    ema.update(lin)
    for rate in (0.5, 0.9):
        for s, p0 in zip(ema.shadows[rate], start):
            e1 = rate * p0 + (1 - rate) * (p0 + 1)
            torch.testing.assert_close(s, rate * e1 + (1 - rate) * (p0 + 3))


def test_label_dropout_uses_null_class(tmp_path):
    t = _trainer(tmp_path, batch_size=4000, p_uncond=0.25)
    _, y, _, _, _ = t.batch(0)
    frac = (y == 10).double().mean().item()
    assert abs(frac - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    _, y2, _, _, _ = t.batch(0)
    assert torch.equal(y, y2)  # a step's batch is a function of (seed, step)


def test_noised_classifier_trains_on_all_quartiles(tmp_path):
    t = _trainer(tmp_path, task="classifier", steps=4, batch_size=64, log_every=4, save_every=4)
    t.run()
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert {"accuracy_q0", "accuracy_q3", "loss_q3"} <= set(row)
    t2 = _trainer(tmp_path / "clean", task="classifier", noised=False, batch_size=8)
    assert int(t2.batch(0)[2].abs().sum()) == 0  # clean classifier: t = 0


def _state_equal(a, b, exact=True):
    """Deep comparison of (nested) training states."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _state_equal(a[k], b[k], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _state_equal(x, y, exact)
    elif torch.is_tensor(a):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    else:
        assert a == b


RUN = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import _trainer
    import fastguide.train.checkpoint as ck
    kill_at = int(sys.argv[2])
    saves = []
    real_write = ck._write_bytes
    def write(path, data):
        saves.append(path)
        if len(saves) == kill_at:  # die half-way through writing this checkpoint
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)
    ck._write_bytes = write
    resume = os.path.exists(os.path.join(sys.argv[1], "checkpoint.pt"))
    t = _trainer(sys.argv[1], steps=6, batch_size=16, save_every=2, lr=1e-3, p_uncond=0.2,
                 ema_rates=(0.9, 0.99), schedule_sampler="loss-second-moment", resume=resume)
    t.run()
""")


def test_kill_during_checkpoint_write_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(run_dir, kill_at):
        return subprocess.run([sys.executable, str(script), str(run_dir), str(kill_at)], env=env,
                              capture_output=True, text=True, timeout=HANG)

    killed = run(tmp_path / "a", 2)  # killed while writing the step-4 checkpoint
    assert killed.returncode == -9, killed.stderr
    assert load_training_state(tmp_path / "a" / "checkpoint.pt")["step"] == 2
    assert (tmp_path / "a" / "checkpoint.pt.tmp").exists()  # the torn write, ignored
    resumed = run(tmp_path / "a", 0)
    assert resumed.returncode == 0, resumed.stderr
    straight = run(tmp_path / "b", 0)
    assert straight.returncode == 0, straight.stderr
    a = load_training_state(tmp_path / "a" / "checkpoint.pt")
    b = load_training_state(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema", "optimizer", "sampler", "rng"):
        _state_equal(a[key], b[key])


GLOO = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_train import _trainer
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
    t = _trainer(out, steps=3, batch_size=16, lr=1e-3, p_uncond=0.2, save_every=3,
                 schedule_sampler="loss-second-moment")
    t.run()
    dist.destroy_process_group()
""")


def test_two_gloo_ranks_equal_one_process(tmp_path):
    script = tmp_path / "gloo.py"
    script.write_text(GLOO.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "init"),
                               str(tmp_path / "ddp")], env=env, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        assert p.wait(timeout=HANG) == 0, p.stderr.read()
    # One process, same global batch, split into the same two halves as microbatches.
    single = _trainer(tmp_path / "one", steps=3, batch_size=16, microbatch=8, lr=1e-3,
                      p_uncond=0.2, save_every=3, schedule_sampler="loss-second-moment")
    single.run()
    a = load_training_state(tmp_path / "ddp" / "checkpoint.pt")
    b = load_training_state(tmp_path / "one" / "checkpoint.pt")
    # The logged losses cover both ranks' halves of each batch: equal to one process's.
    row_a, row_b = (json.loads((tmp_path / d / "log.jsonl").read_text().splitlines()[-1])
                    for d in ("ddp", "one"))
    assert row_a.keys() == row_b.keys()
    for k in row_a:
        assert row_a[k] == pytest.approx(row_b[k], rel=1e-5), k
    _state_equal(a["sampler"], b["sampler"], exact=False)
    # Weights: gradients agree to float summation order, but Adam divides by sqrt(v), so an
    # element whose gradient is near zero can move by up to lr per step either way; measured
    # max difference 4e-5 after 3 steps of lr 1e-3. Compare at 1e-4, and check that another
    # seed differs by far more.
    close = dict(rtol=0.0, atol=1e-4)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], **close)
    other = _trainer(tmp_path / "seed1", steps=3, batch_size=16, lr=1e-3, seed=1, save_every=3,
                     p_uncond=0.2)
    other.run()
    c = load_training_state(tmp_path / "seed1" / "checkpoint.pt")
    diff = max((c["model"][k] - b["model"][k]).abs().max().item() for k in b["model"])
    assert diff > 10 * close["atol"]


def test_bf16_autocast_is_the_default(tmp_path):
    from fastguide.train.trainer import _cpu_has_bf16

    assert TrainOptions(run_dir=str(tmp_path)).precision == "bf16"
    if _cpu_has_bf16():
        t = _trainer(tmp_path, precision="bf16", steps=2, batch_size=8, log_every=2, save_every=2)
    else:
        with pytest.warns(UserWarning, match="--precision fp32"):
            t = _trainer(tmp_path, precision="bf16", steps=2, batch_size=8, log_every=2,
                         save_every=2)
    x0, y, t_, _, noise = t.batch(0)
    convs = [m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d)]
    dtypes = []
    hook = convs[1].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with t.autocast():
        t.model(x0, t_, y)
    hook.remove()
    assert dtypes == [torch.bfloat16]  # the convolutions run in bf16 under the autocast
    t.run()
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["loss"]) and t.step == 2
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # fp32 master weights


def test_resume_with_changed_options_warns(tmp_path):
    _trainer(tmp_path, steps=1, batch_size=8, save_every=1).run()
    with pytest.warns(UserWarning, match=r"lr: 0.0001 -> 0.001"):
        t = _trainer(tmp_path, steps=2, batch_size=8, save_every=1, lr=1e-3, resume=True)
    assert t.step == 1


def test_fp16_loss_scaling_runs_and_records_scale(tmp_path):
    t = _trainer(tmp_path, steps=2, batch_size=8, precision="fp16", log_every=2, save_every=2,
                 grad_clip=1.0)
    t.run()
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert row["loss_scale"] > 0 and row["grad_norm"] >= 0


def test_image_folder_and_npz_datasets(tmp_path):
    from PIL import Image

    from fastguide.train import load_dataset
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (4, 6, 10, 3), dtype=np.uint8)  # 6 high, 10 wide
    for i, (cls, arr) in enumerate(zip(["cat", "dog", "cat", "ant"], pix)):
        (tmp_path / "sub" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "sub" / cls / f"{i}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "flat" / f"{cls}_{i}.png")
    sub = load_dataset(str(tmp_path / "sub"), resolution=6)
    flat = load_dataset(str(tmp_path / "flat"), resolution=6, class_from="prefix")
    # sorted files: ant/3, cat/0, cat/2, dog/1; classes sorted: ant=0, cat=1, dog=2
    x, y = sub.get([0, 1, 2, 3])
    assert y.tolist() == [0, 1, 1, 2] and sub.num_classes == 3
    # 6x10 at resolution 6: no resize, centre crop of columns 2..7; values mapped to [-1, 1]
    expected = torch.from_numpy(pix[3][:, 2:8]).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(x[0], expected)
    assert sorted(flat.get([0, 1, 2, 3])[1].tolist()) == [0, 1, 1, 2]
    np.savez(tmp_path / "d.npz", arr_0=pix[:, :, :6], arr_1=np.array([3, 1, 4, 1]))
    npz = load_dataset(str(tmp_path / "d.npz"))
    x, y = npz.get([2])
    assert y.tolist() == [4] and x.shape == (1, 3, 6, 6)
    torch.testing.assert_close(x[0], torch.from_numpy(pix[2, :, :6]).permute(2, 0, 1).float() / 127.5 - 1)


def test_super_resolution_training_conditions_on_area_resized_x0(tmp_path):
    from fastguide.nn import SuperResUNet

    torch.manual_seed(0)
    model = SuperResUNet(8, 1, 32, 1, 1, (), channel_mult=(1, 2), num_classes=10)
    seen = []
    forward = model.forward

    def spy(x, t, low_res=None, y=None):
        seen.append(low_res.detach())
        return forward(x, t, low_res=low_res, y=y)

    model.forward = spy
    opts = TrainOptions(run_dir=str(tmp_path), progress=False, precision="fp32", steps=30,
                        batch_size=16, lr=1e-3, low_res_size=4, log_every=10, save_every=30)
    t = Trainer(model, digits_dataset(), DIFFUSION, opts)
    x0 = t.batch(0)[0]
    t.run()
    # guided-diffusion's super_res_train: low_res = F.interpolate(x0, small_size, mode="area"),
    # i.e. the mean of each 2x2 block here.
    torch.testing.assert_close(seen[0], x0.reshape(16, 1, 4, 2, 4, 2).mean(dim=(3, 5)))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    with pytest.raises(ValueError, match="low_res_size"):
        Trainer(digits_unet(), digits_dataset(), DIFFUSION,
                TrainOptions(run_dir=str(tmp_path), precision="fp32", low_res_size=4))


STOPPABLE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_train import _trainer
    steps = int(sys.argv[2])
    t = _trainer(sys.argv[1], steps=steps, batch_size=8, log_every=1, save_every=10_000,
                 lr=1e-3, resume=os.path.exists(os.path.join(sys.argv[1], "checkpoint.pt")))
    t.run()
    print(t.step, t.stopped_by)
""")


def test_sigterm_checkpoints_after_the_step_in_flight_and_resumes(tmp_path):
    import signal
    import time

    script = tmp_path / "stoppable.py"
    script.write_text(STOPPABLE.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tmp_path / "a" / "log.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "a"), "100000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err
    step, stopped_by = out.split()
    assert stopped_by == "SIGTERM" and int(step) >= 2
    saved = load_training_state(tmp_path / "a" / "checkpoint.pt")
    assert saved["step"] == int(step)  # no periodic save was due: this is the stop's checkpoint
    # Resuming two more steps equals an uninterrupted run of the same length.
    target = str(int(step) + 2)
    for run_dir in ("a", "b"):
        r = subprocess.run([sys.executable, str(script), str(tmp_path / run_dir), target],
                           env=env, capture_output=True, text=True, timeout=HANG)
        assert r.returncode == 0 and r.stdout.split() == [target, "None"], r.stderr
    a = load_training_state(tmp_path / "a" / "checkpoint.pt")
    b = load_training_state(tmp_path / "b" / "checkpoint.pt")
    for key in ("model", "ema", "optimizer"):
        _state_equal(a[key], b[key])
