"""Forward throughput: images per second and MFU of one model, batch and backend.

Timed: model(x, t[, y]) under no_grad, inputs already on the device, outputs discarded. For the
CUDA-graph backend, graph.replay() on static inputs; for torch.compile, the calls after the
first (compile) call, whose duration is reported as compile_s.
"""
import time

import torch

from .backends import cuda_graphed, memory_format, prepare
from .flops import forward_flops, peak_flops
from .models import build, example_inputs
from .results import error_row
from .timing import sync, timed_runs

__all__ = ["base_row", "measure_forward", "forward_model_rows"]


def base_row(name, batch, backend):
    return {"model": name, "batch": batch, "backend": backend.name}


def throughput_fields(flops_per_img, batch, stats, device):
    """img/s, achieved FLOP/s and MFU from a timing result (stats of one call on `batch`)."""
    img_per_s = batch / stats["time_s"]
    peak = peak_flops(device)
    flops_per_s = flops_per_img * img_per_s
    return {"img_per_s": img_per_s, "flops_per_s": flops_per_s,
            "mfu": flops_per_s / peak if peak else None}


def _callable(model, backend, args, kwargs, device):
    """-> (the zero-argument function to time, extra row fields (compile time), the CUDA graph
    or None: the caller holds it while timing)."""
    extra = {}
    fn = model
    if backend.compile_mode:
        fn = torch.compile(model, mode=backend.compile_mode, dynamic=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(*args, **kwargs)
        sync(device)
        extra["compile_s"] = time.perf_counter() - t0
    if backend.cuda_graph:
        replay, graph = cuda_graphed(fn, args, kwargs)
        return replay, extra, graph
    return (lambda: fn(*args, **kwargs)), extra, None


def measure_forward(model, name, batch, backend, device, dtype, timing):
    """The "ok" fields of a forward row for a model already prepared for `backend`."""
    fmt = memory_format(backend)
    args, kwargs = example_inputs(name, batch, device, memory_format=fmt)
    fn, extra, graph = _callable(model, backend, args, kwargs, device)
    with torch.no_grad():
        stats = timed_runs(fn, device, **timing)
    del graph  # frees the graph's private memory pool
    flops = forward_flops(name)
    return {"status": "ok", "dtype": str(dtype).removeprefix("torch."),
            "layout": "channels_last" if backend.channels_last else "contiguous",
            "params": flops["params"], "flops_per_img": flops["total"], **stats,
            **throughput_fields(flops["total"], batch, stats, device), **extra}


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def forward_model_rows(name, batches, backends, device, dtype_override, timing):
    """Yield one row per (backend, batch) for model `name`, built once and re-prepared per
    backend. A failure (out of memory, a compile error) becomes an "error" row."""
    model = build(name, device)
    for backend in backends:
        dtype = dtype_override or backend.dtype
        try:
            prepare(model, backend, dtype)
        except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
            for batch in batches:
                yield error_row(base_row(name, batch, backend), exc)
            continue
        for batch in batches:
            base = base_row(name, batch, backend)
            try:
                fields = measure_forward(model, name, batch, backend, device, dtype, timing)
                yield {**base, **fields}
            except Exception as exc:  # noqa: BLE001
                yield error_row(base, exc)
            finally:
                if backend.compile_mode:
                    torch._dynamo.reset()
                _free(device)
    del model
    _free(device)
