"""Forward cells in a child process with a deadline: for torch.compile(mode="max-autotune"),
whose compile time (minutes, in worker processes) cannot be bounded or interrupted in-process.
On timeout the child's whole process group is killed and the unfinished cells are recorded
as skipped; the rows it finished are kept.

    python -m fastguide.bench.isolate '<json spec>'   (the child; prints one "ROW {json}" per cell)
"""
import json
import os
import signal
import subprocess
import sys

import torch

__all__ = ["forward_rows_isolated"]

MARK = "ROW "


def _spec(name, batches, backend, device, dtype, timing):
    return {"model": name, "batches": list(batches), "backend": backend.name,
            "device": str(device), "dtype": str(dtype).removeprefix("torch.") if dtype else None,
            "timing": timing, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def forward_rows_isolated(name, batches, backend, device, dtype, timing, timeout_s):
    """Rows for (name, backend) at each batch, measured in a child process given timeout_s."""
    spec = json.dumps(_spec(name, batches, backend, device, dtype, timing))
    proc = subprocess.Popen([sys.executable, "-m", "fastguide.bench.isolate", spec],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout_s, 1))
        why = None if proc.returncode == 0 else f"child process exited with {proc.returncode}"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        why = f"time budget: not finished within the {timeout_s:.0f} s left of the suite"
    rows = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
    done = {row["batch"] for row in rows}
    why = why or "the child process printed no row for it"
    for batch in batches:
        if batch not in done:
            rows.append({"model": name, "batch": batch, "backend": backend.name,
                         "status": "skipped" if why.startswith("time") else "error",
                         "reason": why})
    return rows


def _child(spec):
    from .backends import BACKENDS
    from .forward import forward_model_rows
    torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]  # as in the parent
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"]) if spec["dtype"] else None
    for row in forward_model_rows(spec["model"], spec["batches"], [BACKENDS[spec["backend"]]],
                                  device, dtype, spec["timing"]):
        print(MARK + json.dumps(row), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
