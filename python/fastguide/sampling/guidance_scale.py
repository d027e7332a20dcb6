"""How strong guidance is at each noise level: a constant w, a schedule w(σ), and the guidance
interval of Kynkäänniemi et al. (2024), which applies guidance only for σ in [σ_lo, σ_hi].

Every guidance that mixes a strong prediction with a weaker one (classifier-free guidance,
autoguidance) uses the same combine,

    out = strong + w(σ)·(strong − weak),

with w a per-image column, so that images at different noise levels in one batch each get their
own scale and the combine never asks the host for σ.

Named ramps are written in u ∈ [0, 1], the position of log σ between log σ_min (u = 0) and
log σ_max (u = 1), and are normalised so that their mean over u is w:
    constant   w
    linear     2w·(1 − u)           more guidance as the noise falls (Wang et al. 2024 found
                                     increasing schedules better than constant ones)
    linear_down 2w·u                more guidance at high noise
    cosine     w·(1 − cos(π(1 − u)))   a smooth version of linear
"""
import math

import torch

__all__ = ["GuidanceScale", "RAMPS", "guided_combine", "check_interval"]


def _linear(u):
    return 2 * (1 - u)


def _linear_down(u):
    return 2 * u


def _cosine(u):
    return 1 - torch.cos(math.pi * (1 - u))


RAMPS = {"constant": None, "linear": _linear, "linear_down": _linear_down, "cosine": _cosine}


def check_interval(interval):
    """(σ_lo, σ_hi) with 0 <= σ_lo <= σ_hi, or None."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be a pair (sigma_lo, sigma_hi), got "
                         f"{interval!r}") from None
    if not (math.isfinite(lo) and 0 <= lo) or math.isnan(hi):
        raise ValueError(f"guidance_interval needs 0 <= sigma_lo, got {interval!r}")
    if lo > hi:
        raise ValueError(f"guidance_interval needs sigma_lo <= sigma_hi, got sigma_lo={lo:g} > "
                         f"sigma_hi={hi:g}")
    return lo, hi


class GuidanceScale:
    """w(σ) for a batch of noise levels: scale × ramp(σ), zero outside the interval.

    scale: the guidance strength w (a number). schedule: None / "constant", a ramp name from
    RAMPS, or a callable σ -> factor (a [B] tensor or a number) multiplied into w. The named
    ramps need sigma_range = (σ_min, σ_max) of the process. interval: (σ_lo, σ_hi) or None.
    """

    def __init__(self, scale, schedule=None, interval=None, sigma_range=None):
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.scale = scale
        if isinstance(schedule, str):
            if schedule not in RAMPS:
                raise ValueError(f"unknown guidance schedule {schedule!r}; choose from "
                                 f"{list(RAMPS)} or pass a callable of sigma")
            schedule = RAMPS[schedule]
            if schedule is not None and sigma_range is None:
                raise ValueError("a named guidance ramp needs sigma_range=(sigma_min, sigma_max)")
        elif schedule is not None and not callable(schedule):
            raise ValueError(f"guidance schedule must be a name or a callable, got {schedule!r}")
        self.schedule = schedule
        self.sigma_range = None
        if sigma_range is not None:
            lo, hi = (float(v) for v in sigma_range)
            if not 0 < lo < hi:
                raise ValueError(f"sigma_range needs 0 < sigma_min < sigma_max, got {sigma_range}")
            self.sigma_range = (lo, hi)
        self.interval = check_interval(interval)

    @property
    def is_constant(self):
        """True when w does not depend on σ (the fused step kernels can then do the combine)."""
        return self.schedule is None and self.interval is None

    def _ramp(self, sigma):
        if self.schedule in RAMPS.values() and self.sigma_range is not None:
            lo, hi = (math.log(v) for v in self.sigma_range)
            u = ((sigma.clamp_min(1e-20).log() - lo) / (hi - lo)).clamp(0, 1)
            return self.schedule(u)
        return torch.as_tensor(self.schedule(sigma), dtype=sigma.dtype, device=sigma.device)

    def __call__(self, sigma):
        """w for each entry of sigma (a [B] tensor), as a float32/64 tensor of the same shape."""
        sigma = torch.as_tensor(sigma)
        if not sigma.is_floating_point():
            sigma = sigma.double()
        w = torch.full_like(sigma, self.scale)
        if self.schedule is not None:
            w = w * self._ramp(sigma)
        if self.interval is not None:
            lo, hi = self.interval
            w = torch.where((sigma >= lo) & (sigma <= hi), w, torch.zeros_like(w))
        return w

    def off(self, w):
        """True when w (this scale's value for a batch) is zero for every image because σ is
        outside the interval: the caller skips the network call the guidance term needs. Reads
        w on the host (one [B] copy a step), and only when an interval is set."""
        return self.interval is not None and torch.is_tensor(w) and not bool(w.any())

    def __repr__(self):
        return (f"GuidanceScale({self.scale:g}, schedule={self.schedule!r}, "
                f"interval={self.interval})")


def as_guidance_scale(scale):
    return scale if isinstance(scale, GuidanceScale) else GuidanceScale(scale)


def guided_combine(strong, weak, w, channels):
    """strong + w·(strong − weak) on the first `channels` channels; the rest (a learned
    variance) are kept from the strong prediction. w: a number or a [B] tensor."""
    if torch.is_tensor(w):
        w = w.to(device=strong.device, dtype=strong.dtype).reshape(-1, *([1] * (strong.dim() - 1)))
    s, k = strong[:, :channels], weak[:, :channels]
    guided = s + w * (s - k)
    return torch.cat([guided, strong[:, channels:]], dim=1) if strong.shape[1] > channels else guided
