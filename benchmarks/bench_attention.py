"""fastguide.ops.attention against torch SDPA (each backend that runs) and guided-diffusion's
einsum attention, forward and backward, at ADM's shapes (batch 32, head dim 64).

FLOPs counted: forward 4*N*H*L^2*d (two matmuls), backward 10*N*H*L^2*d (five matmuls; the
recomputation of the logits counts as one of them).

    python benchmarks/bench_attention.py              # ADM shapes on a GPU, small ones on CPU
"""
import argparse
import math
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import median_time, run_metadata, write_json  # noqa: E402

from fastguide.ops import attention  # noqa: E402

# (L, heads) of the attention layers of the ImageNet-64 (192 ch) and -256 (256 ch) presets.
GPU_SHAPES = [(1024, 6), (256, 9), (64, 12), (1024, 8), (256, 16), (64, 16), (65, 8)]
CPU_SHAPES = [(64, 4), (256, 4), (1024, 2)]
HEAD_DIM = 64


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


def candidates(device):
    out = {"fused": lambda qkv, heads: attention(qkv, heads, "legacy"), "einsum": einsum_attention}
    if device.type == "cuda":
        B = torch.nn.attention.SDPBackend
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            if hasattr(B, name):
                out["sdpa_" + name.lower()] = sdpa(getattr(B, name))
    else:
        out["sdpa"] = sdpa(torch.nn.attention.SDPBackend.MATH)
    return out


def bench(fn, qkv, heads, device, reps):
    try:
        fwd = median_time(lambda: fn(qkv, heads), device, reps=reps)
        x = qkv.detach().requires_grad_()
        y = fn(x, heads)
        g = torch.randn_like(y)
        bwd = median_time(lambda: torch.autograd.grad(y, x, g, retain_graph=True), device, reps=reps)
        return {"fwd_s": fwd, "bwd_s": bwd}
    except RuntimeError as e:  # an SDPA backend that does not support this shape or dtype
        return {"skipped": str(e).splitlines()[0][:200]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 2 on CPU")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    batch, reps = args.batch or (32 if gpu else 2), args.reps or (30 if gpu else 5)
    cands = candidates(device)
    rows = []
    for length, heads in (GPU_SHAPES if gpu else CPU_SHAPES):
        # channels-last tokens, as a channels-last model produces them
        qkv = torch.randn(batch, length, 3 * heads * HEAD_DIM, device=device, dtype=dtype).transpose(1, 2)
        flops = 4 * batch * heads * length**2 * HEAD_DIM
        row = {"batch": batch, "L": length, "heads": heads, "head_dim": HEAD_DIM,
               "dtype": str(dtype).replace("torch.", ""), "fwd_flops": flops, "bwd_flops": 2.5 * flops}
        for name, fn in cands.items():
            r = bench(fn, qkv, heads, device, reps)
            if "fwd_s" in r:
                r["fwd_TFLOPs"] = flops / r["fwd_s"] / 1e12
                r["bwd_TFLOPs"] = 2.5 * flops / r["bwd_s"] / 1e12
            row[name] = r
        timed = [k for k in cands if k != "fused" and "fwd_s" in row[k]]
        best = min(timed, key=lambda k: row[k]["fwd_s"])
        row["fused_vs_best_fwd"] = {"baseline": best, "ratio": row[best]["fwd_s"] / row["fused"]["fwd_s"]}
        best_b = min(timed, key=lambda k: row[k]["bwd_s"])
        row["fused_vs_best_bwd"] = {"baseline": best_b, "ratio": row[best_b]["bwd_s"] / row["fused"]["bwd_s"]}
        row["fused_vs_einsum"] = {"fwd": row["einsum"]["fwd_s"] / row["fused"]["fwd_s"],
                                  "bwd": row["einsum"]["bwd_s"] / row["fused"]["bwd_s"]}
        rows.append(row)
        print(f"L={length:5d} heads={heads:3d}  fused fwd {row['fused']['fwd_TFLOPs']:.3f} TFLOP/s "
              f"bwd {row['fused']['bwd_TFLOPs']:.3f}  vs best fwd ({best}) "
              f"{row['fused_vs_best_fwd']['ratio']:.2f}x  vs einsum fwd {row['fused_vs_einsum']['fwd']:.2f}x "
              f"bwd {row['fused_vs_einsum']['bwd']:.2f}x", flush=True)
    out = args.out or pathlib.Path(__file__).parent / "results" / f"attention_{device.type}.json"
    write_json(out, {"benchmark": "attention", "meta": run_metadata(device), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
