"""fastguide's attention kernels against every torch SDPA backend (flash, cuDNN, efficient,
math), the previous fastguide kernel (979f40d, as fastguide::attention_previous) and
guided-diffusion's einsum attention, forward and backward, at ADM's shapes: head dim 64 with
L = 64, 256, 1024 at batch 1, 8 and 32, and L = 4096 (512-px models).

Inputs are channels-last qkv tokens ([N, L, 3C] memory, what a channels-last model produces), which
every candidate reads without a copy; "kernel_nchw" is fastguide's kernel on the contiguous
[N, 3C, L] layout. The backward is timed through autograd from a recorded output (the previous
kernel, which has no autograd registration, through its backward op).

FLOPs: forward 4 N H L^2 d (two matmuls), backward 10 N H L^2 d (five; the recomputed logits
count once). The paper bound of a row is max(FLOPs / 790 TFLOP/s (bf16, measured on these
H100/H200s, docs in shared/DESIGN.md), bytes / copy bandwidth measured in the same run), with the
fewest bytes: qkv in, out (+ lse) out; for the backward qkv, out, dO and lse in, dqkv out.

    python benchmarks/bench_attention.py              # ADM shapes on a GPU, small ones on CPU
    python benchmarks/bench_attention.py --quick      # two shapes, a few reps (smoke run)
"""
import argparse
import math
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import copy_bandwidth, median_time, run_metadata, write_json  # noqa: E402

from fastguide import dispatch  # noqa: E402
from fastguide.ops import attention  # noqa: E402
from fastguide.ops.attention import attention_cuda_plan  # noqa: E402

HEAD_DIM = 64
PEAK_BF16 = 790e12  # FLOP/s, dense bf16 measured on the project's H100/H200s (DESIGN.md)
# (L, heads, batches): ADM-256 has 16 heads of 64 at L = 64 and 256 and 8 at L = 1024.
GPU_SHAPES = [(64, 16, (1, 8, 32)), (256, 16, (1, 8, 32)), (1024, 8, (1, 8, 32)), (4096, 4, (1, 8))]
QUICK_SHAPES = [(256, 16, (8,)), (1024, 8, (8,))]
CPU_SHAPES = [(64, 4, (2,)), (256, 4, (2,)), (1024, 2, (2,))]


def einsum_attention(qkv, heads):
    """guided-diffusion's QKVAttentionLegacy: q, k each scaled by ch^-1/4, fp32 softmax."""
    n, c3, length = qkv.shape
    ch = c3 // (3 * heads)
    q, k, v = qkv.reshape(n * heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(n, -1, length)


def sdpa(backend):
    def run(qkv, heads):
        n, c3, length = qkv.shape
        q, k, v = qkv.reshape(n, heads, 3, c3 // (3 * heads), length).transpose(-1, -2).unbind(2)
        with torch.nn.attention.sdpa_kernel(backend):
            a = F.scaled_dot_product_attention(q, k, v)
        return a.transpose(-1, -2).reshape(n, -1, length)
    return run


def previous_kernel(qkv, heads):
    return torch.ops.fastguide.attention_previous(qkv, heads, False)[0]


def candidates(device):
    """name -> (function of (qkv, heads), whether it takes the contiguous [N, 3C, L] layout)."""
    out = {"kernel": (lambda qkv, heads: attention(qkv, heads, "legacy"), False),
           "einsum": (einsum_attention, False)}
    if device.type == "cuda":
        out["kernel_nchw"] = (lambda qkv, heads: attention(qkv, heads, "legacy"), True)
        if hasattr(torch.ops.fastguide, "attention_previous"):  # CUDA builds only
            out["previous"] = (previous_kernel, False)
        B = torch.nn.attention.SDPBackend
        for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
            if hasattr(B, name):
                out["sdpa_" + name.lower()] = (sdpa(getattr(B, name)), False)
    else:
        out["sdpa_math"] = (sdpa(torch.nn.attention.SDPBackend.MATH), False)
    return out


def bench(name, fn, x, heads, device, reps):
    try:
        fwd = median_time(lambda: fn(x, heads), device, reps=reps)
        if name == "previous":  # no autograd registration: its backward op directly
            out, lse = torch.ops.fastguide.attention_previous(x, heads, False)
            g = torch.randn_like(out)
            bwd = median_time(lambda: torch.ops.fastguide.attention_previous_backward(g, x, out, lse, heads, False),
                              device, reps=reps)
        else:
            xg = x.detach().requires_grad_()
            y = fn(xg, heads)
            g = torch.randn_like(y)
            bwd = median_time(lambda: torch.autograd.grad(y, xg, g, retain_graph=True), device, reps=reps)
        return {"fwd_s": fwd, "bwd_s": bwd}
    except RuntimeError as e:  # an SDPA backend that does not support this shape, dtype or GPU
        return {"skipped": str(e).splitlines()[0][:200]}


def paper_bound(batch, heads, length, dtype, bandwidth):
    """Seconds of the roofline floor, forward and backward (module docstring)."""
    el = torch.empty((), dtype=dtype).element_size()
    c = heads * HEAD_DIM
    fwd_flops, bwd_flops = 4 * batch * heads * length**2 * HEAD_DIM, 10 * batch * heads * length**2 * HEAD_DIM
    lse = 4 * batch * heads * length
    fwd_bytes = batch * length * (3 * c + c) * el + lse
    bwd_bytes = batch * length * (3 * c + 2 * c + 3 * c) * el + lse
    return (max(fwd_flops / PEAK_BF16, fwd_bytes / bandwidth), max(bwd_flops / PEAK_BF16, bwd_bytes / bandwidth),
            fwd_flops, bwd_flops)


def add_dispatch_entries(row, cands, qkv, nchw, heads):
    """Entries for fastguide.dispatch: each layout's kernel against the fastest SDPA backend
    measured (the alternative must not win whatever backend SDPA would pick)."""
    sdpas = [k for k in cands if k.startswith("sdpa") and "fwd_s" in row[k]]
    entries = []
    for name, x in (("kernel", qkv), ("kernel_nchw", nchw)):
        if sdpas and "fwd_s" in row.get(name, {}):
            key = list(dispatch.attention_key(x, heads))
            entries += [{"key": key, "pass": p, "kernel_s": row[name][f"{p}_s"],
                         "alternative_s": min(row[s][f"{p}_s"] for s in sdpas)} for p in ("fwd", "bwd")]
    if entries:
        row["dispatch"] = entries


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16", help="GPU dtype")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="two shapes, 5 reps: a smoke run")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    dtype = getattr(torch, args.dtype) if gpu else torch.float32
    reps = args.reps or (5 if args.quick else 20 if gpu else 5)
    shapes = (QUICK_SHAPES if args.quick else GPU_SHAPES) if gpu else CPU_SHAPES
    cands = candidates(device)
    bandwidth = copy_bandwidth(device, nbytes=1 << 28) if gpu else None
    rows = []
    for length, heads, batches in shapes:
        for batch in batches:
            # channels-last tokens, as a channels-last model produces them
            qkv = torch.randn(batch, length, 3 * heads * HEAD_DIM, device=device, dtype=dtype).transpose(1, 2)
            row = {"batch": batch, "L": length, "heads": heads, "head_dim": HEAD_DIM,
                   "dtype": str(dtype).replace("torch.", "")}
            if gpu:
                bf, bb, ff, fb = paper_bound(batch, heads, length, dtype, bandwidth)
                row.update(fwd_flops=ff, bwd_flops=fb, bound_fwd_s=bf, bound_bwd_s=bb,
                           plan=attention_cuda_plan(dtype, HEAD_DIM, length, batch * heads))
            else:
                row.update(fwd_flops=4 * batch * heads * length**2 * HEAD_DIM,
                           bwd_flops=10 * batch * heads * length**2 * HEAD_DIM)
            nchw = qkv.contiguous()
            for name, (fn, takes_nchw) in cands.items():
                r = bench(name, fn, nchw if takes_nchw else qkv, heads, device, reps)
                if "fwd_s" in r:
                    r["fwd_TFLOPs"] = row["fwd_flops"] / r["fwd_s"] / 1e12
                    r["bwd_TFLOPs"] = row["bwd_flops"] / r["bwd_s"] / 1e12
                    if gpu:
                        r["fwd_of_bound"] = row["bound_fwd_s"] / r["fwd_s"]
                        r["bwd_of_bound"] = row["bound_bwd_s"] / r["bwd_s"]
                row[name] = r
            rows.append(row)
            add_dispatch_entries(row, cands, qkv, nchw, heads)
            k = row["kernel"]
            if "fwd_s" not in k:
                print(f"N={batch:2d} L={length:5d} H={heads:2d}  kernel failed: {k['skipped']}", flush=True)
                continue
            sdpas = [k for k in cands if k.startswith("sdpa") and "fwd_s" in row[k]]
            for pas in ("fwd", "bwd"):
                if sdpas:
                    best = min(sdpas, key=lambda k: row[k][f"{pas}_s"])
                    row[f"kernel_vs_best_sdpa_{pas}"] = {
                        "baseline": best, "ratio": row[best][f"{pas}_s"] / row["kernel"][f"{pas}_s"]}
                if "previous" in row and "fwd_s" in row["previous"]:
                    row[f"kernel_vs_previous_{pas}"] = row["previous"][f"{pas}_s"] / row["kernel"][f"{pas}_s"]
            line = (f"N={batch:2d} L={length:5d} H={heads:2d}  kernel fwd {k['fwd_TFLOPs']:7.2f} TFLOP/s "
                    f"bwd {k['bwd_TFLOPs']:7.2f}")
            for pas in ("fwd", "bwd"):
                if f"kernel_vs_best_sdpa_{pas}" in row:
                    v = row[f"kernel_vs_best_sdpa_{pas}"]
                    line += f"  {pas} {v['ratio']:.2f}x {v['baseline']}"
            if "kernel_vs_previous_fwd" in row:
                line += f"  vs previous {row['kernel_vs_previous_fwd']:.1f}x/{row['kernel_vs_previous_bwd']:.1f}x"
            if gpu:
                line += f"  of bound {k['fwd_of_bound']:.2f}/{k['bwd_of_bound']:.2f}"
            print(line, flush=True)
    out = args.out or pathlib.Path(__file__).parent / "results" / f"attention_{device.type}.json"
    meta = run_metadata(device)
    if gpu:
        meta["copy_bandwidth_Bps"] = bandwidth
        meta["peak_bf16_flops"] = PEAK_BF16
    write_json(out, {"benchmark": "attention", "meta": meta, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
