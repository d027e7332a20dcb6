"""The discrete samplers' fused path: one network call, then one kernel per step
(fastguide.ops.ddpm_step / ddim_step), and optionally the pair captured in a CUDA graph.

The kernel does the CFG combine, the learned-range variance, the x0 prediction and clipping, the
posterior mean, the classifier shift and the noise. Its coefficient rows are gathered from
per-process tables on the device (table[t]), so no step asks the host anything.
"""
import torch

from .. import ops
from ..diffusion.gaussian import ModelMeanType, ModelVarType
from .cfg import ClassifierFreeGuidance

__all__ = ["fused_supported", "fused_step", "coef_table", "GraphedStep"]

_PREDICTION = {ModelMeanType.EPSILON: "eps", ModelMeanType.START_X: "x0", ModelMeanType.V: "v"}
_VARIANCE = (ModelVarType.LEARNED_RANGE, ModelVarType.FIXED_SMALL, ModelVarType.FIXED_LARGE)


def fused_supported(diffusion, x, denoised_fn):
    """Why the fused step cannot run here, or None when it can."""
    if diffusion.model_mean_type not in _PREDICTION:
        return f"model_mean_type {diffusion.model_mean_type.value}"
    if diffusion.model_var_type not in _VARIANCE:
        return f"model_var_type {diffusion.model_var_type.value}"
    if denoised_fn is not None:
        return "a denoised_fn"
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"x of dtype {x.dtype}"
    return None


def coef_table(diffusion, kind, device, eta=0.0):
    """The [T, 8] coefficient table of `kind` ("ddpm" or "ddim") on `device` (cached)."""
    cache = diffusion.__dict__.setdefault("_fused_tables", {})
    key = (kind, torch.device(device), float(eta))
    if key not in cache:
        d = diffusion
        if kind == "ddpm":
            if d.model_var_type == ModelVarType.FIXED_LARGE:
                log_var, var = d.fixed_large_log_variance, d.fixed_large_variance
            else:  # learned range (its lower end) and fixed small
                log_var, var = d.posterior_log_variance_clipped, d.posterior_variance
            cache[key] = ops.sampler.ddpm_coef_table(
                d.alphas_cumprod, d.betas, d.posterior_mean_coef1, d.posterior_mean_coef2,
                log_var, var, device=device)
        else:
            cache[key] = ops.sampler.ddim_coef_table(d.alphas_cumprod, d.alphas_cumprod_prev, eta,
                                                     device=device)
    return cache[key]


def _model_output(model, x, s, model_kwargs):
    """The network's output; a classifier-free-guided model returns its raw 2B rows and w, so
    the combine happens inside the step kernel."""
    if isinstance(model, ClassifierFreeGuidance) and model.fusable:
        return model.forward_raw(x, s, **model_kwargs), model.guidance_scale
    return model(x, s, **model_kwargs), 0.0


def fused_step(kind, diffusion, model, x, t, randn_like, clip_denoised=True, cond_fn=None,
               model_kwargs=None, eta=0.0):
    """One DDPM ("ddpm") or DDIM ("ddim") step. Returns {'sample', 'pred_xstart'}.

    randn_like(x) is drawn after the network call, in ADM's order; it may also be a tensor."""
    model_kwargs = model_kwargs or {}
    s = diffusion.model_timesteps(t)
    out, w = _model_output(model, x, s, model_kwargs)
    noise = randn_like if torch.is_tensor(randn_like) else randn_like(x)
    grad = cond_fn(x, s, **model_kwargs) if cond_fn is not None else None
    coef = coef_table(diffusion, kind, x.device, eta)[t]
    prediction = _PREDICTION[diffusion.model_mean_type]
    if kind == "ddpm":
        learned = diffusion.model_var_type == ModelVarType.LEARNED_RANGE
        sample, x0 = ops.ddpm_step(x, out, coef, noise, grad, cfg_scale=w, prediction=prediction,
                                   learned_range=learned, clip=clip_denoised)
    else:
        sample, x0 = ops.ddim_step(x, out, coef, noise, grad, cfg_scale=w, prediction=prediction,
                                   clip=clip_denoised)
    return {"sample": sample, "pred_xstart": x0}


class GraphedStep:
    """A step (network call + fused update) captured once in a CUDA graph and replayed.

    Shapes are fixed by the first call. Noise is drawn outside the graph (per-image generators)
    and copied into a static buffer, like x and t. Classifier guidance needs autograd inside the
    step, which a graph cannot hold, so cond_fn is refused.
    """

    def __init__(self, step):
        self.step = step
        self.graph = None

    def _capture(self, x, t, noise):
        self.x, self.t, self.noise = x.clone(), t.clone(), noise.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up: lazy initialisation must not happen during capture
                self.step(self.x, self.t, self.noise)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = self.step(self.x, self.t, self.noise)

    def __call__(self, x, t, noise):
        if self.graph is None:
            self._capture(x, t, noise)
        self.x.copy_(x)
        self.t.copy_(t)
        self.noise.copy_(noise)
        self.graph.replay()
        return {k: v.clone() for k, v in self.out.items()}  # the next replay overwrites self.out
