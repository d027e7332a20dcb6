"""Fused sampler steps: one kernel per step of DDPM, DDIM, Euler and Heun.

Schedules are precomputed into a coefficient table [T, 8] on the device; a loop gathers the
rows of its timesteps (`table[t]`, no host sync) and passes them as `coef` [B, 8]:

    DDPM: 1/sqrt(abar), sqrt(1/abar - 1), posterior mean coef1, coef2, log-variance (clipped
          posterior, or the fixed one), log beta, 1[t > 0], fixed variance (for the classifier
          shift: guided-diffusion's posterior variance is 0 at t = 0, its clipped log is not)
    DDIM: 1/sqrt(abar), sqrt(1/abar - 1), sqrt(abar_prev), sqrt(1 - abar_prev - sigma^2), sigma,
          sqrt(1 - abar), 1[t > 0], 0        with sigma from eta (Song et al. eq. 16)

model_output may hold [conditional; unconditional] rows (2B) for classifier-free guidance,
eps = (1 + w) * eps(z, c) - w * eps(z), and 2C channels when the variance is learned.

x may be in any dense layout (contiguous, channels-last, ...): the steps read it in place and
return outputs with x's strides; the other tensors are read through their own strides (a
non-dense x is copied to contiguous first).
"""
import torch

from .. import _extension  # noqa: F401  (registers torch.ops.fastguide)
from ._checks import check_tensor, dense_like

__all__ = ["ddpm_coef_table", "ddim_coef_table", "ddpm_step", "ddim_step", "euler_step",
           "heun_step", "ddpm_step_reference", "ddim_step_reference", "euler_step_reference",
           "heun_step_reference", "PREDICTIONS"]

PREDICTIONS = {"eps": 0, "x0": 1, "v": 2}
_STEP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _f64(a):
    return torch.as_tensor(a, dtype=torch.float64)


def ddpm_coef_table(alphas_cumprod, betas, posterior_mean_coef1, posterior_mean_coef2,
                    log_variance, variance=None, device=None):
    """[T, 8] float32 rows for ddpm_step. log_variance is the clipped posterior log-variance for
    a learned range (its lower end) or the fixed model log-variance otherwise; variance is the
    fixed variance the classifier shift uses (default exp(log_variance))."""
    abar = _f64(alphas_cumprod)
    t = torch.arange(abar.shape[0])
    var = torch.exp(_f64(log_variance)) if variance is None else _f64(variance)
    cols = [torch.sqrt(1.0 / abar), torch.sqrt(1.0 / abar - 1), _f64(posterior_mean_coef1),
            _f64(posterior_mean_coef2), _f64(log_variance), torch.log(_f64(betas)),
            (t > 0).double(), var]
    return torch.stack(cols, dim=1).float().to(device)


def ddim_coef_table(alphas_cumprod, alphas_cumprod_prev, eta=0.0, device=None):
    """[T, 8] float32 rows for ddim_step with DDIM's sigma_t(eta).

    The alpha-bar terms are evaluated in float32 from float32 alpha-bars, exactly as
    guided-diffusion does, so the fused sampler reproduces its numbers: sqrt(1 - abar_prev) in
    float32 carries up to ~6e-8 / (1 - abar_prev) relative error near t = 0, which float64
    would avoid but which ADM's samples contain."""
    abar64 = _f64(alphas_cumprod)
    abar, prev = abar64.float(), _f64(alphas_cumprod_prev).float()
    sigma = eta * torch.sqrt((1 - prev) / (1 - abar)) * torch.sqrt(1 - abar / prev)
    t = torch.arange(abar.shape[0])
    cols = [torch.sqrt(1.0 / abar64).float(), torch.sqrt(1.0 / abar64 - 1).float(), torch.sqrt(prev),
            torch.sqrt((1 - prev - sigma**2).clamp_min(0)), sigma, torch.sqrt(1 - abar),
            (t > 0).float(), torch.zeros_like(abar)]
    return torch.stack(cols, dim=1).to(device)


# ---- checks --------------------------------------------------------------------------------

def _check_step(x, model_output, coef, noise, grad, prediction, learned_range):
    check_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be [B, C, *spatial], got shape {list(x.shape)}")
    if x.dtype not in _STEP_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    check_tensor(model_output, "model_output")
    b, c = x.shape[0], x.shape[1]
    mo = model_output.shape
    ok = (len(mo) == x.dim() and mo[0] in (b, 2 * b) and mo[1] in (c, 2 * c)
          and tuple(mo[2:]) == tuple(x.shape[2:]))
    if not ok:
        raise ValueError(f"model_output must be [B or 2B, C or 2C, *spatial] = [{b} or {2 * b}, "
                         f"{c} or {2 * c}, {', '.join(map(str, x.shape[2:]))}] for x of shape "
                         f"{list(x.shape)}, got {list(mo)}")
    if learned_range and mo[1] != 2 * c:
        raise ValueError(f"a learned variance needs model_output with 2C = {2 * c} channels, got {mo[1]}")
    check_tensor(coef, "coef")
    if tuple(coef.shape) != (b, 8):
        raise ValueError(f"coef must be [B, 8] = [{b}, 8] (rows of a coefficient table), got {list(coef.shape)}")
    for name, t in (("noise", noise), ("grad", grad)):
        if t is not None:
            check_tensor(t, name)
            if t.shape != x.shape:
                raise ValueError(f"{name} must have x's shape {list(x.shape)}, got {list(t.shape)}")
    for name, t in (("model_output", model_output), ("coef", coef), ("noise", noise), ("grad", grad)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {sorted(PREDICTIONS)}, got {prediction!r}")


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _cfg(model_output, x):
    return model_output.shape[0] == 2 * x.shape[0]


# ---- fused steps -----------------------------------------------------------------------------

def ddpm_step(x, model_output, coef, noise=None, grad=None, *, cfg_scale=0.0, prediction="eps",
              learned_range=True, clip=True):
    """One ancestral step: CFG combine, learned-range variance, x0 prediction and clipping,
    posterior mean, classifier shift mean + Sigma*grad, and noise. Returns (sample, pred_xstart).
    `grad` is the classifier gradient already multiplied by its scale."""
    _check_step(x, model_output, coef, noise, grad, prediction, learned_range)
    return torch.ops.fastguide.ddpm_step(x, model_output.to(x.dtype), coef.float(), _cast(grad, x.dtype),
                                         _cast(noise, x.dtype), float(cfg_scale),
                                         PREDICTIONS[prediction], learned_range, clip)


def ddim_step(x, model_output, coef, noise=None, grad=None, *, cfg_scale=0.0, prediction="eps",
              clip=True):
    """One DDIM(eta) step (eta lives in the coefficient table), with the score shift
    eps - sqrt(1 - abar) * grad for classifier guidance. Returns (sample, pred_xstart)."""
    _check_step(x, model_output, coef, noise, grad, prediction, False)
    return torch.ops.fastguide.ddim_step(x, model_output.to(x.dtype), coef.float(), _cast(grad, x.dtype),
                                         _cast(noise, x.dtype), float(cfg_scale),
                                         PREDICTIONS[prediction], clip)


def _sigmas(sigma, x, name):
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if s.dim() > 1 or (s.dim() == 1 and s.shape[0] != x.shape[0]):
        raise ValueError(f"{name} must be a scalar or have shape [B] = [{x.shape[0]}], got {list(s.shape)}")
    return s.expand(x.shape[0]).contiguous()


def _check_sigma_step(tensors):
    x = tensors[0][1]
    check_tensor(x, "x")
    if x.dtype not in _STEP_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    for name, t in tensors[1:]:
        check_tensor(t, name)
        if t.shape != x.shape or t.device != x.device:
            raise ValueError(f"{name} must match x's shape {list(x.shape)} and device {x.device}, "
                             f"got {list(t.shape)} on {t.device}")


def euler_step(x, denoised, sigma, sigma_next):
    """x + (sigma_next - sigma) * (x - denoised) / sigma; sigmas are scalars or [B] tensors."""
    _check_sigma_step([("x", x), ("denoised", denoised)])
    return torch.ops.fastguide.euler_step(x, denoised.to(x.dtype), _sigmas(sigma, x, "sigma"),
                                          _sigmas(sigma_next, x, "sigma_next"))


def heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next):
    """Heun's correction: x + (sigma_next - sigma) * (d + d_next) / 2 (EDM Algorithm 1)."""
    _check_sigma_step([("x", x), ("denoised", denoised), ("x_next", x_next), ("denoised_next", denoised_next)])
    return torch.ops.fastguide.heun_step(x, denoised.to(x.dtype), x_next.to(x.dtype),
                                         denoised_next.to(x.dtype), _sigmas(sigma, x, "sigma"),
                                         _sigmas(sigma_next, x, "sigma_next"))


# ---- pure-PyTorch references (fp32 maths, the same formulas written with tensor ops) ---------

def _split(x, model_output, cfg_scale):
    c = x.shape[1]
    out = model_output.float()
    if _cfg(model_output, x):
        cond, uncond = out.chunk(2, dim=0)
        pred = (1 + cfg_scale) * cond[:, :c] - cfg_scale * uncond[:, :c]
        return pred, cond[:, c:]
    return out[:, :c], out[:, c:]


def _rows(coef, x):
    k = coef.float()
    return [k[:, i].view(-1, *([1] * (x.dim() - 1))) for i in range(8)]


def _x0(prediction, x, out, c0, c1):
    if prediction == "eps":
        return c0 * x - c1 * out
    if prediction == "x0":
        return out
    return (x - c1 * out) / c0


def ddpm_step_reference(x, model_output, coef, noise=None, grad=None, *, cfg_scale=0.0,
                        prediction="eps", learned_range=True, clip=True):
    _check_step(x, model_output, coef, noise, grad, prediction, learned_range)
    xf = x.float()
    c0, c1, p1, p2, min_log, max_log, nonzero, fixed_var = _rows(coef, x)
    out, v = _split(x, model_output, cfg_scale)
    x0 = _x0(prediction, xf, out, c0, c1)
    if clip:
        x0 = x0.clamp(-1, 1)
    log_var, var = min_log.expand_as(xf), fixed_var
    if learned_range:
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_var)
    mean = p1 * x0 + p2 * xf
    if grad is not None:
        mean = mean + var * grad.float()
    sample = mean if noise is None else mean + nonzero * torch.exp(0.5 * log_var) * noise.float()
    return sample.to(x.dtype), x0.to(x.dtype)


def ddim_step_reference(x, model_output, coef, noise=None, grad=None, *, cfg_scale=0.0,
                        prediction="eps", clip=True):
    _check_step(x, model_output, coef, noise, grad, prediction, False)
    xf = x.float()
    c0, c1, sq_prev, dir_coef, sigma, sq_one_minus, nonzero, _ = _rows(coef, x)
    out, _ = _split(x, model_output, cfg_scale)
    x0 = _x0(prediction, xf, out, c0, c1)
    if clip:
        x0 = x0.clamp(-1, 1)
    eps = (c0 * xf - x0) / c1
    if grad is not None:
        eps = eps - sq_one_minus * grad.float()
        x0 = c0 * xf - c1 * eps
        eps = (c0 * xf - x0) / c1
    sample = x0 * sq_prev + dir_coef * eps
    if noise is not None:
        sample = sample + nonzero * sigma * noise.float()
    return sample.to(x.dtype), x0.to(x.dtype)


def _bcast(s, x):
    return _sigmas(s, x, "sigma").view(-1, *([1] * (x.dim() - 1)))


def euler_step_reference(x, denoised, sigma, sigma_next):
    s, sn = _bcast(sigma, x), _bcast(sigma_next, x)
    xf = x.float()
    return (xf + (sn - s) * (xf - denoised.float()) / s).to(x.dtype)


def heun_step_reference(x, denoised, x_next, denoised_next, sigma, sigma_next):
    s, sn = _bcast(sigma, x), _bcast(sigma_next, x)
    xf = x.float()
    d = (xf - denoised.float()) / s
    d_next = (x_next.float() - denoised_next.float()) / sn
    return (xf + (sn - s) * (0.5 * d + 0.5 * d_next)).to(x.dtype)


# ---- fake kernels -------------------------------------------------------------------------------

@torch.library.register_fake("fastguide::ddpm_step")
def _fake_ddpm(x, model_output, coef, grad, noise, cfg_scale, prediction, learned_range, clip):
    return dense_like(x), dense_like(x)


@torch.library.register_fake("fastguide::ddim_step")
def _fake_ddim(x, model_output, coef, grad, noise, cfg_scale, prediction, clip):
    return dense_like(x), dense_like(x)


@torch.library.register_fake("fastguide::euler_step")
def _fake_euler(x, denoised, sigma, sigma_next):
    return dense_like(x)


@torch.library.register_fake("fastguide::heun_step")
def _fake_heun(x, denoised, x_next, denoised_next, sigma, sigma_next):
    return dense_like(x)
