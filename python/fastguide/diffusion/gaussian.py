"""The discrete Gaussian diffusion process of DDPM / improved DDPM / ADM.

    q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I),   ᾱ_t = ∏_{s<=t} (1 − β_s)

One class covers both the full process and a respaced one (ADM's SpacedDiffusion): t below is
always an index into this process's own arrays, and `model_timesteps` maps it to the timestep
the network was trained with (and cond_fn is called with), optionally rescaled to [0, 1000).

Every schedule array is computed in float64 on the CPU (ADM does this in numpy) and kept on
each device as float32 tensors, so coefficients are gathered with tensor timesteps and sampling
never has to ask the host for anything.
"""
import enum

import torch

from .respace import space_timesteps, spaced_betas
from .schedules import named_betas

__all__ = ["ModelMeanType", "ModelVarType", "LossType", "GaussianDiffusion"]


class ModelMeanType(enum.Enum):
    PREVIOUS_X = "previous_x"  # the network predicts x_{t-1}
    START_X = "start_x"        # the network predicts x_0
    EPSILON = "epsilon"        # the network predicts ε
    V = "v"                    # v = √ᾱ·ε − √(1−ᾱ)·x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    LEARNED = "learned"              # the extra channels are log Σ
    FIXED_SMALL = "fixed_small"      # Σ = β̃_t, the posterior variance
    FIXED_LARGE = "fixed_large"      # Σ = β_t (β̃_1 at t = 0, so the log is finite)
    LEARNED_RANGE = "learned_range"  # log Σ = frac·log β_t + (1 − frac)·log β̃_t, frac = (v+1)/2


class LossType(enum.Enum):
    MSE = "mse"                    # MSE, plus the vb term when the variance is learned
    RESCALED_MSE = "rescaled_mse"  # the vb term scaled by T/1000
    KL = "kl"                      # the variational bound only
    RESCALED_KL = "rescaled_kl"    # the vb scaled by T

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)


def _enum(kind, value):
    return value if isinstance(value, kind) else kind(value)


def broadcast_to(coef, x):
    """Reshape a per-sample [B] coefficient so it broadcasts against x ([B, C, ...])."""
    return coef.reshape(coef.shape[0], *([1] * (x.dim() - 1)))


class GaussianDiffusion:
    """Discrete Gaussian diffusion with T = len(betas) steps.

    betas: the full process's β (float64). use_timesteps: the original steps to keep (None keeps
    all); the kept process recomputes its β from ᾱ at the kept steps.
    """

    def __init__(self, *, betas, model_mean_type=ModelMeanType.EPSILON,
                 model_var_type=ModelVarType.FIXED_SMALL, loss_type=LossType.MSE,
                 rescale_timesteps=False, use_timesteps=None):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.dim() != 1 or len(betas) == 0 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a non-empty 1-D sequence in (0, 1]")
        self.model_mean_type = _enum(ModelMeanType, model_mean_type)
        self.model_var_type = _enum(ModelVarType, model_var_type)
        self.loss_type = _enum(LossType, loss_type)
        self.rescale_timesteps = bool(rescale_timesteps)
        self.original_num_steps = len(betas)
        if use_timesteps is None:
            self.timestep_map = torch.arange(len(betas))
        else:
            # Like ADM's SpacedDiffusion, β is recomputed from ᾱ even when every step is kept.
            use_timesteps = sorted(set(int(s) for s in use_timesteps))
            if not use_timesteps or use_timesteps[0] < 0 or use_timesteps[-1] >= len(betas):
                raise ValueError(f"use_timesteps must be a non-empty subset of 0..{len(betas) - 1}")
            full_alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            betas, self.timestep_map = spaced_betas(full_alphas_cumprod, use_timesteps)
        self._set_schedule(betas)
        self._device_cache = {}

    @classmethod
    def from_schedule(cls, noise_schedule="linear", steps=1000, timestep_respacing="", **kwargs):
        betas = named_betas(noise_schedule, steps)
        return cls(betas=betas, use_timesteps=space_timesteps(steps, timestep_respacing), **kwargs)

    # ----------------------------------------------------------------------------------------
    # Schedule arrays (float64, CPU) and their per-device float32 copies.

    def _set_schedule(self, betas):
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        self.alphas_cumprod_next = torch.cat([ac[1:], ac.new_zeros(1)])
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.one_minus_alphas_cumprod = 1.0 - ac
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)
        # β̃_0 = 0; ADM clips its log by reusing β̃_1 (or β_0 when T = 1).
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - ac)
        self.log_betas = torch.log(betas)
        large = torch.cat([first, betas[1:]])
        self.fixed_large_variance = large
        self.fixed_large_log_variance = torch.log(large)
        # σ of the equivalent variance-exploding process x / √ᾱ = x_0 + σ·ε (EDM's view).
        self.sigmas = self.sqrt_recipm1_alphas_cumprod

    _DEVICE_ARRAYS = (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next",
        "sqrt_alphas_cumprod",
        "one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
        "posterior_mean_coef2", "log_betas", "fixed_large_variance", "fixed_large_log_variance",
    )

    def arrays(self, device):
        """The schedule arrays as float32 tensors on `device` (cached), plus the timestep map."""
        device = torch.device(device)
        if device not in self._device_cache:
            arrays = {name: getattr(self, name).to(device=device, dtype=torch.float32)
                      for name in self._DEVICE_ARRAYS}
            arrays["timestep_map"] = self.timestep_map.to(device)
            self._device_cache[device] = arrays
        return self._device_cache[device]

    def coef(self, name, t, x):
        """Gather schedule array `name` at timesteps t, shaped to broadcast against x."""
        return broadcast_to(self.arrays(t.device)[name][t], x)

    def model_timesteps(self, t):
        """The timesteps the network (and cond_fn) sees for process indices t."""
        mapped = self.arrays(t.device)["timestep_map"][t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    # ----------------------------------------------------------------------------------------
    # Forward process and posterior.

    def q_mean_variance(self, x_start, t):
        mean = self.coef("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = self.coef("one_minus_alphas_cumprod", t, x_start).expand_as(x_start)
        log_variance = self.coef("log_one_minus_alphas_cumprod", t, x_start).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise has shape {list(noise.shape)}, x_start {list(x_start.shape)}")
        return (self.coef("sqrt_alphas_cumprod", t, x_start) * x_start
                + self.coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (self.coef("posterior_mean_coef1", t, x_t) * x_start
                + self.coef("posterior_mean_coef2", t, x_t) * x_t)
        variance = self.coef("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self.coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ----------------------------------------------------------------------------------------
    # Conversions between the network's parameterisations.

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self.coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart)
                / self.coef("sqrt_recipm1_alphas_cumprod", t, x_t))

    def predict_xstart_from_v(self, x_t, t, v):
        return (self.coef("sqrt_alphas_cumprod", t, x_t) * x_t
                - self.coef("sqrt_one_minus_alphas_cumprod", t, x_t) * v)

    def predict_v(self, x_start, t, noise):
        return (self.coef("sqrt_alphas_cumprod", t, x_start) * noise
                - self.coef("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start)

    def predict_xstart_from_xprev(self, x_t, t, xprev):
        # Invert the posterior mean: x_{t-1} = coef1·x_0 + coef2·x_t.
        return ((xprev - self.coef("posterior_mean_coef2", t, x_t) * x_t)
                / self.coef("posterior_mean_coef1", t, x_t))

    # ----------------------------------------------------------------------------------------
    # The reverse process p(x_{t-1} | x_t).

    def split_model_output(self, model_output, x):
        """Split the network output into (mean part, variance part or None), checking shapes."""
        learned = self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
        channels = x.shape[1] * (2 if learned else 1)
        expected = (x.shape[0], channels, *x.shape[2:])
        if tuple(model_output.shape) != expected:
            what = "2·C channels (learned variance)" if learned else "C channels"
            raise ValueError(f"model output has shape {list(model_output.shape)}, expected "
                             f"{list(expected)} ({what}) for x of shape {list(x.shape)}")
        if learned:
            return torch.split(model_output, x.shape[1], dim=1)
        return model_output, None

    def model_variance(self, var_output, x, t):
        """(variance, log_variance) of p(x_{t-1} | x_t) for the configured ModelVarType."""
        kind = self.model_var_type
        if kind == ModelVarType.LEARNED:
            return torch.exp(var_output), var_output
        if kind == ModelVarType.LEARNED_RANGE:
            min_log = self.coef("posterior_log_variance_clipped", t, x)
            max_log = self.coef("log_betas", t, x)
            frac = (var_output + 1) / 2  # v ∈ [−1, 1] nominally; not clamped, as in ADM
            log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_variance), log_variance
        if kind == ModelVarType.FIXED_LARGE:
            names = ("fixed_large_variance", "fixed_large_log_variance")
        else:
            names = ("posterior_variance", "posterior_log_variance_clipped")
        return tuple(self.coef(name, t, x).expand_as(x) for name in names)

    def predict_xstart(self, mean_output, x, t):
        kind = self.model_mean_type
        if kind == ModelMeanType.EPSILON:
            return self.predict_xstart_from_eps(x, t, mean_output)
        if kind == ModelMeanType.START_X:
            return mean_output
        if kind == ModelMeanType.V:
            return self.predict_xstart_from_v(x, t, mean_output)
        return self.predict_xstart_from_xprev(x, t, mean_output)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Apply the network to get p(x_{t-1} | x_t) and its x_0 prediction.

        Returns a dict with 'mean', 'variance', 'log_variance', 'pred_xstart' (and
        'model_output', the raw mean part). pred_xstart goes through denoised_fn, then is clamped
        to [-1, 1] when clip_denoised.
        """
        _check_timesteps(x, t)
        model_output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        return self.p_mean_variance_from_output(model_output, x, t, clip_denoised, denoised_fn)

    def p_mean_variance_from_output(self, model_output, x, t, clip_denoised=True, denoised_fn=None):
        mean_output, var_output = self.split_model_output(model_output, x)
        variance, log_variance = self.model_variance(var_output, x, t)
        pred_xstart = self.predict_xstart(mean_output, x, t)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            mean = mean_output
        else:
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "model_output": mean_output}

    # ----------------------------------------------------------------------------------------
    # Classifier guidance (Dhariwal & Nichol 2021). cond_fn(x, t, **model_kwargs) returns
    # s·∇ log p(y | x_t), already scaled; it receives the network's timesteps.

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Algorithm 1: shift the mean by Σ·s·∇ log p(y | x_t)."""
        gradient = cond_fn(x, self.model_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Algorithm 2 (score shift, for DDIM): ε' = ε − √(1 − ᾱ)·s·∇ log p(y | x_t).

        ε is re-derived from the (possibly clipped) x_0 prediction, and the new x_0 is not
        clipped again, as in ADM.
        """
        alpha_bar = self.coef("alphas_cumprod", t, x)
        eps = self.predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        gradient = cond_fn(x, self.model_timesteps(t), **(model_kwargs or {}))
        eps = eps - (1 - alpha_bar).sqrt() * gradient
        out = dict(p_mean_var)
        out["pred_xstart"] = self.predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ----------------------------------------------------------------------------------------

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        from .losses import training_losses
        return training_losses(self, model, x_start, t, model_kwargs=model_kwargs, noise=noise)

    def __repr__(self):
        return (f"{type(self).__name__}(T={self.num_timesteps} of {self.original_num_steps}, "
                f"mean={self.model_mean_type.value}, var={self.model_var_type.value}, "
                f"loss={self.loss_type.value})")


def _check_timesteps(x, t):
    if not torch.is_tensor(t) or t.dim() != 1 or t.shape[0] != x.shape[0]:
        shape = list(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"t must be a 1-D tensor with one timestep per sample ({x.shape[0]}), "
                         f"got {shape}")
