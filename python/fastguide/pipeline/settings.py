"""Which diffusion process a model is sampled with, and why.

A sampler must run the process the network was trained on (its β schedule, step count and
whether it learned Σ); the weights do not say. In order of precedence:

1. an explicit setting from the caller (a CLI flag), announced when it overrides one of the
   sources below, since sampling another process than the trained one is rarely wanted;
2. the model's training record (fastguide's NAME.train.json beside the checkpoint);
3. the released guided-diffusion model with the same architecture (its README's flags: the
   64x64 model uses the cosine schedule, every other one the linear);
4. guided-diffusion's defaults (linear, 1000 steps), announced with the flag that changes them.

Each stage of a two-stage (base + upsampler) run resolves its own process.
"""
import dataclasses

from ..nn import presets
from ..nn.infer import released_architecture

__all__ = ["DiffusionSettings", "resolve_diffusion", "NOISE_SCHEDULES"]

NOISE_SCHEDULES = ("linear", "cosine")
_DEFAULT = dict(steps=1000, noise_schedule="linear")


@dataclasses.dataclass(frozen=True)
class DiffusionSettings:
    steps: int
    noise_schedule: str
    learn_sigma: bool
    source: str                 # where steps and noise_schedule came from, for messages
    notes: tuple = ()           # what a user should be told (assumptions, overrides)

    def as_dict(self):
        return {"steps": self.steps, "noise_schedule": self.noise_schedule,
                "learn_sigma": self.learn_sigma}


def _recorded(model, info, origin):
    """(settings dict, source) from the training record or the released architecture."""
    if info and info.get("diffusion"):
        return dict(info["diffusion"]), f"the training record of {origin}"
    preset = released_architecture(getattr(model, "config", {}))
    if preset is not None and presets.diffusion(preset) is not None:
        return presets.diffusion(preset), f"the released {preset} model's flags"
    return None, None


def resolve_diffusion(model, info=None, origin="the model", noise_schedule=None, steps=None,
                      flag_prefix="--"):
    """DiffusionSettings for `model` (loaded, with .config and .learn_sigma), its training
    record `info` (or None) and the caller's explicit settings (None = not given)."""
    if noise_schedule is not None and noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {noise_schedule!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"diffusion steps must be a positive integer, got {steps!r}")
    known, source = _recorded(model, info, origin)
    notes = []
    if known is None:
        given = [f for f, v in (("noise-schedule", noise_schedule), ("diffusion-steps", steps))
                 if v is not None]
        missing = {"noise-schedule": _DEFAULT["noise_schedule"],
                   "diffusion-steps": _DEFAULT["steps"]}
        assumed = [f"{k} {v}" for k, v in missing.items() if k not in given]
        if assumed:
            notes.append(f"{origin} has no training record and is not a released architecture; "
                         f"assuming guided-diffusion's {' and '.join(assumed)} (set "
                         f"{' / '.join(flag_prefix + k for k in missing if k not in given)} if "
                         "it was trained otherwise)")
        known, source = dict(_DEFAULT), "guided-diffusion's defaults"
    else:
        for flag, key, value in (("noise-schedule", "noise_schedule", noise_schedule),
                                 ("diffusion-steps", "steps", steps)):
            if value is not None and value != known.get(key):
                notes.append(f"{flag_prefix}{flag} {value} overrides {key}={known.get(key)} "
                             f"from {source}: sampling a process the model was not trained on")
    learn_sigma = bool(getattr(model, "learn_sigma", known.get("learn_sigma", False)))
    return DiffusionSettings(
        steps=int(steps if steps is not None else known.get("steps", _DEFAULT["steps"])),
        noise_schedule=noise_schedule or known.get("noise_schedule", _DEFAULT["noise_schedule"]),
        learn_sigma=learn_sigma, source=source, notes=tuple(notes))
