"""Training losses of the discrete process (Ho et al. 2020; Nichol & Dhariwal 2021).

  simple:  mean((target − model)²), target = ε, x_0, v or the posterior mean
  hybrid:  simple + L_vb, where L_vb only trains the variance (the mean output is detached)
  RESCALED_MSE: L_vb scaled by T/1000, so a respaced process weighs it like a 1000-step one
  KL:      L_vb alone (RESCALED_KL: times T, an estimate of the full bound)

L_vb is in bits per dimension: KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)) for t > 0, and at t = 0
the negative log-likelihood of the 8-bit data under the discretised Gaussian decoder.
"""
import math

import torch

from .gaussian import LossType, ModelMeanType

__all__ = ["mean_flat", "normal_kl", "approx_standard_normal_cdf",
           "discretized_gaussian_log_likelihood", "vb_terms_bpd", "training_losses"]


def mean_flat(x):
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """Φ(x) ≈ ½(1 + tanh(√(2/π)·(x + 0.044715·x³))), the approximation ADM uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) for data on the 256-level grid of [−1, 1], each level a bin of half-width 1/255.

    The two edge bins extend to ∓∞, so their probability is one CDF, not a difference.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(f"shapes differ: x {list(x.shape)}, means {list(means.shape)}, "
                         f"log_scales {list(log_scales.shape)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(diffusion, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
    """One term of the variational bound, in bits per dimension, per sample.

    Returns {'output': [B] bits/dim, 'pred_xstart': ...}.
    """
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised,
                                    model_kwargs=model_kwargs)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]))
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
        x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]))
    output = torch.where(t == 0, decoder_nll, kl) / math.log(2.0)
    return {"output": output, "pred_xstart": out["pred_xstart"]}


def _mse_target(diffusion, x_start, x_t, t, noise):
    kind = diffusion.model_mean_type
    if kind == ModelMeanType.EPSILON:
        return noise
    if kind == ModelMeanType.START_X:
        return x_start
    if kind == ModelMeanType.V:
        return diffusion.predict_v(x_start, t, noise)
    return diffusion.q_posterior_mean_variance(x_start, x_t, t)[0]


def training_losses(diffusion, model, x_start, t, model_kwargs=None, noise=None):
    """Per-sample losses for one batch: a dict with 'loss' and, where they apply, 'mse', 'vb'.

    t holds process indices (mapped to the network's timesteps as in p_mean_variance).
    """
    model_kwargs = model_kwargs or {}
    if noise is None:
        noise = torch.randn_like(x_start)
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    loss_type = diffusion.loss_type
    terms = {}
    if loss_type.is_vb():
        terms["loss"] = vb_terms_bpd(diffusion, model, x_start, x_t, t, clip_denoised=False,
                                     model_kwargs=model_kwargs)["output"]
        if loss_type == LossType.RESCALED_KL:
            terms["loss"] = terms["loss"] * diffusion.num_timesteps
        return terms

    model_output = model(x_t, diffusion.model_timesteps(t), **model_kwargs)
    mean_output, var_output = diffusion.split_model_output(model_output, x_t)
    if var_output is not None:
        # The vb term trains only the variance: the mean output reaches it detached.
        frozen = torch.cat([mean_output.detach(), var_output], dim=1)
        terms["vb"] = vb_terms_bpd(diffusion, lambda *args, **kwargs: frozen, x_start, x_t, t,
                                   clip_denoised=False)["output"]
        if loss_type == LossType.RESCALED_MSE:
            terms["vb"] = terms["vb"] * (diffusion.num_timesteps / 1000.0)
    terms["mse"] = mean_flat((_mse_target(diffusion, x_start, x_t, t, noise) - mean_output) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
