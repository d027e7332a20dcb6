"""Fused AdaGN against the chain ADM runs and against torch.compile of that chain, at every AdaGN
shape of ADM-64/128/256/512, with the bytes-moved model of each shape.

Shapes: the (C, H, W) of every GroupNormAct call of the imagenet64/128/256/512 presets (a forward
on the meta device lists them), at batch 32, 1 and 8, in that order. Candidates:
    kernel            fastguide's group_norm_act (single pass where the slab fits on chip)
    kernel_multipass  the same op forced onto its multi-pass kernels (CUDA only)
    eager             guided-diffusion's chain, op for op (fastguide.ops.group_norm_act_eager):
                      the alternative the "fused" backend falls back to
    compile           torch.compile of that chain (batch 32 rows by default: each shape compiles)

Bytes model (per row, in the JSON): the fewest bytes any implementation must move through HBM,
forward = read x + write y, backward = read x + read grad_y + write grad_x (parameters, scale,
shift and statistics are under 0.1% at these shapes and left out); the time that floor implies
at 3.35 TB/s (H100 SXM HBM3) and 4.8 TB/s (H200 HBM3e); the achieved fraction of the copy
bandwidth measured in the same run and of the device's datasheet bandwidth. FLOPs: ~10 per
element forward (subtract, scale, shift, SiLU's exponential, reciprocal and product), ~25
backward. Rows also carry the dispatch entries (fastguide.dispatch) their forward and backward
timings imply.

    python benchmarks/bench_adagn.py                    # CPU shapes, or ADM's shapes on a GPU
    python benchmarks/bench_adagn.py --out FILE.json --time-budget 40
"""
import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import copy_bandwidth, median_time, run_metadata, write_json  # noqa: E402

from fastguide import dispatch  # noqa: E402
from fastguide.nn import GroupNormAct, presets  # noqa: E402
from fastguide.nn.base import input_checks  # noqa: E402
from fastguide.ops import group_norm_act, group_norm_act_eager  # noqa: E402

GROUPS = 32
PRESETS = ("imagenet64_cond", "imagenet128_cond", "imagenet256_cond", "imagenet512_cond")
BATCHES = (32, 1, 8)
CPU_SHAPES = [(4, 128, 32, 32), (4, 256, 16, 16), (8, 512, 8, 8)]
HBM = {"h100": 3.35e12, "h200": 4.8e12}  # datasheet bytes per second (SXM parts)
FLOPS_PER_ELEMENT = {"fwd": 10, "bwd": 25}


def adm_shapes():
    """Sorted (C, H, W) of every GroupNormAct call of the presets, from a forward on meta."""
    shapes = set()

    def hook(module, args):
        shapes.add(tuple(args[0].shape[1:]))

    for name in PRESETS:
        with torch.device("meta"):
            model = presets.create(name)
        handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, GroupNormAct)]
        size = model.config["image_size"]
        x = torch.empty(1, 3, size, size, device="meta")
        with torch.no_grad(), input_checks(False):
            model(x, torch.zeros(1, device="meta"), y=torch.zeros(1, dtype=torch.long, device="meta"))
        for h in handles:
            h.remove()
    return sorted(shapes, key=lambda s: (s[1], s[0]), reverse=True)


def kernel(x, w, b, scale, shift):
    return group_norm_act(x, GROUPS, w, b, scale, shift)


def kernel_multipass(x, w, b, scale, shift):
    previous = torch.ops.fastguide._adagn_set_path(1)
    try:
        return group_norm_act(x, GROUPS, w, b, scale, shift)
    finally:
        torch.ops.fastguide._adagn_set_path(previous)


def eager(x, w, b, scale, shift):
    return group_norm_act_eager(x, GROUPS, w, b, scale, shift)


def make_sets(shape, dtype, device, memory_format, count):
    """`count` independent input sets, rotated between runs so repeated runs do not hit cache.
    Parameters as ADM passes them: fp32 weight and bias, scale/shift halves of one projection."""
    n, c = shape[:2]
    sets = []
    for _ in range(count):
        x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=memory_format)
        w = torch.randn(c, device=device) * 0.1 + 1
        b = torch.randn(c, device=device) * 0.1
        scale, shift = (torch.randn(n, 2 * c, device=device) * 0.1).chunk(2, dim=1)
        sets.append([x, w, b, scale, shift])
    return sets


def rotating(fn, sets):
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(sets)
        return fn(*sets[state["i"]])
    return run


def time_forward(fn, sets, device, reps):
    with torch.no_grad():
        return median_time(rotating(fn, sets), device, reps=reps)


def time_backward(fn, sets, device, reps):
    """Backward alone: the graph is built once per set and re-run with retain_graph."""
    graphs = []
    for x, w, b, s, sh in sets:
        leaves = [t.detach().requires_grad_() for t in (x, w, b, s, sh)]
        y = fn(*leaves)
        graphs.append((y, leaves, torch.randn_like(y)))

    def bwd(y, leaves, g):
        return torch.autograd.grad(y, leaves, g, retain_graph=True)
    return median_time(rotating(bwd, graphs), device, reps=reps)


def cost_model(shape, dtype):
    numel = 1
    for d in shape:
        numel *= d
    elem = torch.finfo(dtype).bits // 8
    model = {"min_bytes": {"fwd": 2 * numel * elem, "bwd": 3 * numel * elem},
             "flops": {p: f * numel for p, f in FLOPS_PER_ELEMENT.items()}}
    model["floor_s"] = {f"{dev}_{bw / 1e12:g}TBps": {p: b / bw for p, b in model["min_bytes"].items()}
                        for dev, bw in HBM.items()}
    return model


def bench_shape(shape, dtype, device, memory_format, candidates, reps):
    row = {"shape": list(shape), "groups": GROUPS, "dtype": str(dtype).removeprefix("torch."),
           "layout": "channels_last" if memory_format == torch.channels_last else "contiguous",
           **cost_model(shape, dtype)}
    bytes_fwd = row["min_bytes"]["fwd"]
    count = 1 if device.type == "cpu" else max(1, min(8, (256 << 20) // (bytes_fwd + 1)))
    sets = make_sets(shape, dtype, device, memory_format, count)
    for name, fn in candidates.items():
        tf, tb = time_forward(fn, sets, device, reps), time_backward(fn, sets, device, reps)
        row[name] = {"fwd_s": tf, "bwd_s": tb, "fwd_GBps": bytes_fwd / tf / 1e9,
                     "bwd_GBps": row["min_bytes"]["bwd"] / tb / 1e9}
    for name in candidates:
        if name != "kernel":
            row[f"kernel_vs_{name}"] = {p: row[name][f"{p}_s"] / row["kernel"][f"{p}_s"] for p in ("fwd", "bwd")}
    if "eager" in candidates:
        key = list(dispatch.adagn_key(sets[0][0]))
        row["dispatch"] = [{"key": key, "pass": p, "kernel_s": row["kernel"][f"{p}_s"],
                            "alternative_s": row["eager"][f"{p}_s"]} for p in ("fwd", "bwd")]
    return row


def add_fractions(row, meta):
    for name in ("kernel", "kernel_multipass"):
        if name in row and "copy_GBps" in meta:
            row[f"{name}_fraction_of_copy_bw"] = {p: row[name][f"{p}_GBps"] / meta["copy_GBps"] for p in ("fwd", "bwd")}
        if name in row and meta.get("hbm_Bps"):
            row[f"{name}_fraction_of_hbm"] = {p: row[name][f"{p}_GBps"] * 1e9 / meta["hbm_Bps"] for p in ("fwd", "bwd")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--layout", choices=["channels_last", "contiguous", "both"], default=None)
    p.add_argument("--compile", choices=["none", "batch32", "all"], default=None,
                   help="rows with a torch.compile baseline (default: batch32 on CUDA, all on CPU)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; rows past it are listed as skipped (default: no limit)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/adagn_<device>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda, but no CUDA device is available")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    layout = args.layout or ("channels_last" if gpu else "both")
    formats = {"channels_last": [torch.channels_last], "contiguous": [torch.contiguous_format],
               "both": [torch.contiguous_format, torch.channels_last]}[layout]
    reps = args.reps or (20 if gpu else 10)
    compile_rows = args.compile or ("batch32" if gpu else "all")
    shapes = [(n, *s) for n in BATCHES for s in adm_shapes()] if gpu else CPU_SHAPES
    compiled = torch.compile(group_norm_act_eager, dynamic=False)

    meta = run_metadata(device)
    if gpu:
        meta["copy_GBps"] = copy_bandwidth(device) / 1e9
        name = torch.cuda.get_device_name(device).lower()
        meta["hbm_Bps"] = next((bw for dev, bw in HBM.items() if dev in name), None)
    meta["bytes_model"] = __doc__.split("Bytes model")[1].split("\n\n")[0].strip()
    start, rows = time.monotonic(), []
    for fmt in formats:
        for shape in shapes:
            base = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                    "layout": "channels_last" if fmt == torch.channels_last else "contiguous"}
            if args.time_budget is not None and time.monotonic() - start > args.time_budget:
                rows.append({**base, **cost_model(shape, dtype), "skipped": f"time budget of {args.time_budget:g} s"})
                continue
            candidates = {"kernel": kernel, "eager": eager}
            if gpu:
                candidates["kernel_multipass"] = kernel_multipass
            if compile_rows == "all" or (compile_rows == "batch32" and shape[0] == 32):
                candidates["compile"] = lambda x, w, b, s, sh: compiled(x, GROUPS, w, b, s, sh)
            row = bench_shape(shape, dtype, device, fmt, candidates, reps)
            add_fractions(row, meta)
            rows.append(row)
            ratios = "  ".join(f"{k[10:]} fwd {v['fwd']:.2f}x bwd {v['bwd']:.2f}x"
                               for k, v in row.items() if k.startswith("kernel_vs_"))
            hbm = row.get("kernel_fraction_of_hbm", {}).get("fwd")
            print(f"{row['layout']:>13} {str(shape):>22}  kernel fwd {row['kernel']['fwd_GBps']:7.1f} GB/s"
                  f"{f' ({100 * hbm:4.1f}% HBM)' if hbm else ''} bwd {row['kernel']['bwd_GBps']:7.1f} GB/s  {ratios}",
                  flush=True)
    out = args.out or pathlib.Path(__file__).parent / "results" / f"adagn_{device.type}.json"
    write_json(out, {"benchmark": "adagn", "meta": meta, "rows": rows})
    skipped = sum("skipped" in r for r in rows)
    print(f"wrote {out} ({len(rows) - skipped} rows measured, {skipped} skipped)")


if __name__ == "__main__":
    main()
