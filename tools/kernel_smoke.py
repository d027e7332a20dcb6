"""Every CUDA kernel path once, checked against its reference: small enough to run under
compute-sanitizer (memcheck, racecheck). Exits non-zero on any mismatch."""
import sys

import torch

from fastguide.ops import attention, attention_reference, group_norm_act, group_norm_act_reference
from fastguide.ops import sampler as S


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check(name, got, want, tol):
    err = rel(got, want)
    print(f"{name:60s} rel err {err:.2e} {'ok' if err <= tol else 'FAIL'}")
    return err <= tol


def adagn_cases():
    ok = True
    for shape, g in (((2, 64, 8, 8), 32), ((1, 192, 9, 9), 32), ((2, 20, 5, 7), 4)):
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            for cl in (False, True):
                x = torch.randn(shape, device="cuda", dtype=dtype)
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                s = torch.randn(shape[0], shape[1], device="cuda")
                xf, xr = x.clone().requires_grad_(), x.float().requires_grad_()
                y, r = group_norm_act(xf, g, scale=s, shift=s), group_norm_act_reference(xr, g, scale=s, shift=s)
                y.float().sum().backward()
                r.sum().backward()
                name = f"adagn {shape} {dtype} {'cl' if cl else 'nchw'}"
                ok &= check(name + " fwd", y, r, tol) & check(name + " bwd", xf.grad, xr.grad, 10 * tol)
    return ok


def attention_cases():
    ok = True
    for length, ch, dtype in ((64, 64, torch.bfloat16), (200, 64, torch.float16), (300, 128, torch.bfloat16),
                              (65, 32, torch.bfloat16), (50, 24, torch.float32)):
        x = torch.randn(2, 3 * 4 * ch, length, device="cuda", dtype=dtype).transpose(1, 2).contiguous().transpose(1, 2)
        xf, xr = x.clone().requires_grad_(), x.float().requires_grad_()
        y, r = attention(xf, 4, "legacy"), attention_reference(xr, 4, "legacy")
        y.float().sum().backward()
        r.sum().backward()
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        name = f"attention L={length} ch={ch} {dtype}"
        ok &= check(name + " fwd", y, r, tol) & check(name + " bwd", xf.grad, xr.grad, 10 * tol)
    return ok


def sampler_cases():
    betas = torch.linspace(1e-3, 0.2, 10, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    table = S.ddpm_coef_table(abar, betas, betas * prev.sqrt() / (1 - abar),
                              (1 - prev) * (1 - betas).sqrt() / (1 - abar), torch.log(betas))
    t = torch.tensor([0, 5, 9])
    x, noise = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6)
    mo = torch.randn(6, 8, 6, 6)
    cpu = S.ddpm_step(x, mo, table[t], noise, cfg_scale=1.0)[0]
    gpu = S.ddpm_step(x.cuda(), mo.cuda(), table[t].cuda(), noise.cuda(), cfg_scale=1.0)[0]
    return check("ddpm_step cuda vs cpu", gpu.cpu(), cpu, 1e-6)


if __name__ == "__main__":
    results = [adagn_cases(), attention_cases(), sampler_cases()]
    torch.cuda.synchronize()
    sys.exit(0 if all(results) else 1)
