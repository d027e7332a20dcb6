"""Fused AdaGN against the chain ADM runs and against torch.compile of that chain.

The eager chain is guided-diffusion's: GroupNorm computed in fp32 after an upcast, cast back,
then h * (1 + scale) + shift, then SiLU. Bytes counted are the least that must move: forward
reads x and writes y; backward reads x and grad_y and writes grad_x.

    python benchmarks/bench_adagn.py                 # CPU shapes, or ADM's shapes on a GPU
    python benchmarks/bench_adagn.py --out FILE.json
"""
import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import copy_bandwidth, median_time, run_metadata, write_json  # noqa: E402

from fastguide.ops import group_norm_act  # noqa: E402

GROUPS = 32
GPU_SHAPES = [(32, c, h, h) for c in (256, 512, 1024) for h in (64, 32, 16, 8)]
CPU_SHAPES = [(4, 128, 32, 32), (4, 256, 16, 16), (8, 512, 8, 8)]


def adm_chain(x, w, b, scale, shift):
    """guided-diffusion's GroupNorm32 -> scale/shift -> SiLU, op for op."""
    h = F.group_norm(x.float(), GROUPS, w, b, 1e-5).type(x.dtype)
    h = h * (1 + scale[..., None, None]) + shift[..., None, None]
    return F.silu(h)


def fused(x, w, b, scale, shift):
    return group_norm_act(x, GROUPS, w, b, scale, shift)


def make_sets(shape, dtype, device, memory_format, count):
    """`count` independent input sets, rotated between runs so repeated runs do not hit cache."""
    n, c = shape[:2]
    sets = []
    for _ in range(count):
        x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=memory_format)
        w = torch.randn(c, device=device) * 0.1 + 1   # fp32 params, as in guided-diffusion
        b = torch.randn(c, device=device) * 0.1
        scale = (torch.randn(n, c, device=device) * 0.1).to(dtype)
        shift = (torch.randn(n, c, device=device) * 0.1).to(dtype)
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


def bench_shape(shape, dtype, device, memory_format, candidates, reps):
    elem = torch.finfo(dtype).bits // 8
    numel = 1
    for d in shape:
        numel *= d
    fwd_bytes, bwd_bytes = 2 * numel * elem, 3 * numel * elem
    # Enough sets that one rotation exceeds the cache (GPU L2 is 50-60 MB).
    count = 1 if device.type == "cpu" else max(1, min(8, (256 << 20) // (fwd_bytes + 1)))
    sets = make_sets(shape, dtype, device, memory_format, count)
    row = {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
           "layout": "channels_last" if memory_format == torch.channels_last else "contiguous",
           "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes}
    for name, fn in candidates.items():
        tf = time_forward(fn, sets, device, reps)
        tb = time_backward(fn, sets, device, reps)
        row[name] = {"fwd_s": tf, "fwd_GBps": fwd_bytes / tf / 1e9,
                     "bwd_s": tb, "bwd_GBps": bwd_bytes / tb / 1e9}
    for name in candidates:
        if name != "fused":
            row[f"fused_vs_{name}"] = {"fwd": row[name]["fwd_s"] / row["fused"]["fwd_s"],
                                       "bwd": row[name]["bwd_s"] / row["fused"]["bwd_s"]}
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--layout", choices=["channels_last", "contiguous", "both"], default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/adagn_<device>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    layout = args.layout or ("channels_last" if gpu else "both")
    formats = {"channels_last": [torch.channels_last], "contiguous": [torch.contiguous_format],
               "both": [torch.contiguous_format, torch.channels_last]}[layout]
    reps = args.reps or (50 if gpu else 10)
    candidates = {"fused": fused, "eager": adm_chain}
    if not args.no_compile:
        candidates["compile"] = torch.compile(adm_chain, dynamic=False)

    meta = run_metadata(device)
    if gpu:
        meta["copy_GBps"] = copy_bandwidth(device) / 1e9
    rows = []
    for fmt in formats:
        for shape in (GPU_SHAPES if gpu else CPU_SHAPES):
            row = bench_shape(shape, dtype, device, fmt, candidates, reps)
            if gpu:
                row["fused_fwd_pct_of_copy_bw"] = 100 * row["fused"]["fwd_GBps"] / meta["copy_GBps"]
                row["fused_bwd_pct_of_copy_bw"] = 100 * row["fused"]["bwd_GBps"] / meta["copy_GBps"]
            rows.append(row)
            ratios = "  ".join(f"{k[9:]} fwd {v['fwd']:.2f}x bwd {v['bwd']:.2f}x"
                               for k, v in row.items() if k.startswith("fused_vs_"))
            print(f"{row['layout']:>13} {str(shape):>20}  fused fwd {row['fused']['fwd_GBps']:7.1f} GB/s "
                  f"bwd {row['fused']['bwd_GBps']:7.1f} GB/s  {ratios}", flush=True)
    out = args.out or pathlib.Path(__file__).parent / "results" / f"adagn_{device.type}.json"
    write_json(out, {"benchmark": "adagn", "meta": meta, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
