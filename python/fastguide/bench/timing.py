"""Timing and run metadata shared by every benchmark (benchmarks/timing.py re-exports this)."""
import datetime
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import time

import torch

__all__ = ["median_time", "timed_runs", "sync", "copy_bandwidth", "git_commit", "cpu_name",
           "run_metadata", "write_json"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_run(fn, device):
    """Seconds of one fn() call: CUDA events on a GPU, the host clock elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn, device, warmup=3, reps=20):
    """Median seconds of fn() over reps runs, after warm-up. CUDA runs are timed with events."""
    for _ in range(warmup):
        fn()
    sync(device)
    return statistics.median(_one_run(fn, device) for _ in range(reps))


def timed_runs(fn, device, warmup=1, target_s=1.0, min_reps=3, max_reps=50):
    """Time fn() with as many repetitions as fit in about target_s (within [min_reps, max_reps]).

    The first timed run sizes the rest, so a 0.5 s forward gets a few reps and a 1 ms one many.
    Returns {"time_s": median, "time_min_s", "reps"}."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = [_one_run(fn, device)]
    reps = max(min_reps, min(max_reps, math.ceil(target_s / max(times[0], 1e-9))))
    times += [_one_run(fn, device) for _ in range(reps - 1)]
    return {"time_s": statistics.median(times), "time_min_s": min(times), "reps": len(times)}


def copy_bandwidth(device, nbytes=1 << 30):
    """Measured device-to-device copy bandwidth (bytes read + written per second): the ceiling
    a memory-bound kernel is compared with."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, reps=10)
    return 2 * nbytes / t


def _git(where, *args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=where,
                          timeout=10).stdout.strip()


def git_commit():
    """HEAD of the checkout we run from (the working directory, else this file's), plus
    "+dirty" when tracked files differ from it."""
    for where in (pathlib.Path.cwd(), pathlib.Path(__file__).parent):
        try:
            dirty = _git(where, "status", "--porcelain", "--untracked-files=no")
            return _git(where, "rev-parse", "HEAD") + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else platform.machine()."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def run_metadata(device):
    import fastguide
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "torch": torch.__version__,
        "fastguide_build": fastguide.build_info(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        meta["device"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
    else:
        threads = torch.get_num_threads()
        meta["device"] = f"cpu: {cpu_name()}, {threads} thread{'s' * (threads != 1)}"
    return meta


def write_json(path, payload):
    """Write atomically (a temporary file, then a rename): a run killed mid-write leaves the
    previous, complete file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path
