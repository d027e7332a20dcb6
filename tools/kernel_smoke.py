"""Every CUDA kernel at least once, each result checked against its reference: small enough to run
under compute-sanitizer (memcheck, racecheck, initcheck, synccheck). Exits non-zero on any
mismatch.

Covered: AdaGN single pass (channels-last forward and backward, with clusters where the device
has them, and contiguous forward) and every multi-pass kernel (forced with _adagn_set_path), at
16-byte packs and single elements, fp32/fp16/bf16, SiLU and none, G = 1, parameters in x's dtype,
scale/shift as strided views; the sampler steps (DDPM, DDIM, Euler and Heun: the sigma kernel)
in contiguous, channels-last and mismatched layouts; attention in both qkv layouts and orders,
forward and backward. Every backward takes a random grad_out (a .sum() would hide errors that
cancel), and outputs land in memory poisoned with NaN first.

    python tools/kernel_smoke.py [--quick]
"""
import argparse
import sys

import torch

from fastguide.ops import attention, attention_reference, group_norm_act, group_norm_act_reference
from fastguide.ops import sampler as S

FAILS = []


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check(name, got, want, tol):
    err = rel(got, want)
    ok = err <= tol and bool(torch.isfinite(got).all())
    print(f"{name:72s} rel err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        FAILS.append(name)


def poison(numel):
    """Fill the allocator's free blocks with NaN, so an unwritten output element shows."""
    torch.full((max(numel, 1) * 4,), float("nan"), device="cuda")


def channels_last(x):
    return x.permute(0, *range(2, x.dim()), 1).contiguous().permute(0, x.dim() - 1, *range(1, x.dim() - 1))


def adagn_case(shape, groups, dtype, layout, act, param_dtype=torch.float32, misaligned=False):
    n, c = shape[:2]
    g = torch.Generator(device="cuda").manual_seed(hash((shape, groups)) % 2**31)
    numel = 1
    for d in shape:
        numel *= d
    if misaligned:  # channels-last storage one element past a 16-byte boundary
        base = (torch.randn(numel + 1, device="cuda", generator=g) * 1.3 + 0.5).to(dtype)
        x = base[1:].view(n, *shape[2:], c).permute(0, len(shape) - 1, *range(1, len(shape) - 1))
        assert x.data_ptr() % 16 and layout == "cl"
    else:
        x = (torch.randn(shape, device="cuda", generator=g) * 1.3 + 0.5).to(dtype)
        if layout == "cl":
            x = channels_last(x)
    emb = 0.3 * torch.randn(n, 2 * c, device="cuda", generator=g)
    w = (1 + 0.2 * torch.randn(c, device="cuda", generator=g)).to(param_dtype)
    b = (0.1 * torch.randn(c, device="cuda", generator=g)).to(param_dtype)
    grad = torch.randn(shape, device="cuda", generator=g).to(dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, emb.to(param_dtype))]
    s, sh = leaves[3].chunk(2, dim=1)  # strided views, read in place
    poison(numel)
    y = group_norm_act(leaves[0], groups, leaves[1], leaves[2], s, sh, act=act)
    poison(numel)
    y.backward(grad)
    ref = [t.detach().float().requires_grad_() for t in (x, w, b, emb.to(param_dtype))]
    r = group_norm_act_reference(ref[0], groups, ref[1], ref[2], *ref[3].chunk(2, dim=1), act=act)
    r.backward(grad.float())
    tol = 1e-5 if dtype == torch.float32 else (2 ** -9 if dtype == torch.bfloat16 else 2 ** -11)
    name = f"adagn {tuple(shape)} G={groups} {str(dtype)[6:]} {layout}{' misaligned' if misaligned else ''} act={act}"
    check(name + " y", y, r, tol)
    check(name + " dx", leaves[0].grad, ref[0].grad, max(8 * tol, 1e-4))
    check(name + " dweight", leaves[1].grad, ref[1].grad, 1e-3)
    check(name + " demb", leaves[3].grad, ref[3].grad, 1e-3)


def adagn_cases(quick):
    cases = [((2, 64, 8, 8), 32, torch.bfloat16, "cl", "silu"),              # single pass, packs
             ((1, 256, 32, 32), 32, torch.bfloat16, "cl", "silu"),           # clusters at N = 1
             ((2, 192, 9, 9), 32, torch.float16, "cl", None),                # packs straddle groups
             ((3, 64, 5, 7), 8, torch.float32, "cl", "silu"),
             ((2, 64, 8, 8), 32, torch.bfloat16, "nchw", "silu"),            # contiguous single pass
             ((3, 20, 5, 7), 4, torch.bfloat16, "cl", "silu"),               # single elements
             ((3, 20, 5, 7), 4, torch.float32, "nchw", None),
             ((2, 16, 6, 6), 1, torch.float32, "cl", "silu"),                # G = 1
             ((1, 32, 96, 96), 32, torch.bfloat16, "cl", "silu"),            # multi-tile, many splits
             ((1, 32, 96, 96), 32, torch.float16, "nchw", "silu")]
    extra = [((2, 64, 7, 6), 32, torch.bfloat16, "cl", "silu", torch.float32, True),   # misaligned
             ((2, 64, 8, 8), 32, torch.bfloat16, "cl", "silu", torch.bfloat16, False)]  # bf16 params
    if quick:
        cases = cases[:2] + cases[4:6]
    for forced in (0, 1):  # auto (single pass where it applies), then always multi-pass
        torch.ops.fastguide._adagn_set_path(forced)
        try:
            for shape, g, dtype, layout, act in cases:
                adagn_case(shape, g, dtype, layout, act)
            for shape, g, dtype, layout, act, pd, mis in ([] if quick else extra):
                adagn_case(shape, g, dtype, layout, act, pd, mis)
        finally:
            torch.ops.fastguide._adagn_set_path(0)


def sampler_cases():
    betas = torch.linspace(1e-3, 0.2, 10, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    ddpm = S.ddpm_coef_table(abar, betas, betas * prev.sqrt() / (1 - abar),
                             (1 - prev) * (1 - betas).sqrt() / (1 - abar), torch.log(betas), device="cuda")
    ddim = S.ddim_coef_table(abar, prev, 0.5, device="cuda")
    t = torch.tensor([0, 5, 9], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for layout in ("nchw", "cl", "mixed"):
            x, noise, grad = (torch.randn(3, 8, 6, 6, device="cuda", generator=g).to(dtype) for _ in range(3))
            mo = torch.randn(6, 16, 6, 6, device="cuda", generator=g).to(dtype)
            if layout != "nchw":
                x, noise = channels_last(x), channels_last(noise)
                mo, grad = (channels_last(mo), channels_last(grad)) if layout == "cl" else (mo, grad)
            tol = 1e-5 if dtype == torch.float32 else 2 ** -7
            name = f"{str(dtype)[6:]} {layout}"
            poison(x.numel())
            for fused, ref, table, kw in ((S.ddpm_step, S.ddpm_step_reference, ddpm, {"learned_range": True}),
                                          (S.ddim_step, S.ddim_step_reference, ddim, {})):
                got = fused(x, mo, table[t], noise, grad, cfg_scale=1.5, **kw)
                want = ref(x, mo, table[t], noise, grad, cfg_scale=1.5, **kw)
                check(f"{fused.__name__} {name} sample", got[0], want[0], tol)
                check(f"{fused.__name__} {name} x0", got[1], want[1], tol)
            s, sn = torch.tensor([3.0, 2.0, 1.0], device="cuda"), torch.tensor(0.5)
            check(f"euler_step {name}", S.euler_step(x, mo[:3, :8], s, sn),
                  S.euler_step_reference(x, mo[:3, :8], s, sn), tol)
            check(f"heun_step {name}", S.heun_step(x, mo[:3, :8], noise, grad, s, sn),
                  S.heun_step_reference(x, mo[:3, :8], noise, grad, s, sn), tol)


def attention_cases(quick):
    # (length, head dim, dtype): each tensor-core bucket kind (Dp 64/128/192/256, padded 40, a
    # partial last tile, the copy path of channel-major L = 65) and the fp32 SIMT path.
    cases = [(64, 64, torch.bfloat16), (300, 128, torch.bfloat16), (72, 256, torch.float16),
             (200, 64, torch.float16), (65, 40, torch.bfloat16), (33, 192, torch.bfloat16),
             (65, 32, torch.bfloat16), (50, 24, torch.float32)]
    g = torch.Generator(device="cuda").manual_seed(2)
    for length, ch, dtype in (cases[:3] if quick else cases):
        for tokens in (True, False):
            for order in ("legacy", "new"):
                qkv = torch.randn(2, 3 * 4 * ch, length, device="cuda", generator=g).to(dtype)
                if tokens:  # [N, L, 3C] storage, what a channels-last model produces
                    qkv = qkv.transpose(1, 2).contiguous().transpose(1, 2)
                xf, xr = qkv.clone().requires_grad_(), qkv.float().requires_grad_()
                grad = torch.randn(2, 4 * ch, length, device="cuda", generator=g).to(dtype)
                poison(qkv.numel())
                y = attention(xf, 4, order)
                y.backward(grad)
                r = attention_reference(xr, 4, order)
                r.backward(grad.float())
                tol = 1e-5 if dtype == torch.float32 else 2e-2
                name = f"attention L={length} ch={ch} {str(dtype)[6:]} {'tokens' if tokens else 'channels'} {order}"
                check(name + " out", y, r, tol)
                check(name + " dqkv", xf.grad, xr.grad, 10 * tol)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer shapes (for the slower sanitizer tools)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("kernel_smoke: error: needs a CUDA device")
    adagn_cases(args.quick)
    sampler_cases()
    attention_cases(args.quick)
    torch.cuda.synchronize()
    print(f"{len(FAILS)} failures" + (": " + "; ".join(FAILS) if FAILS else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
