"""guided-diffusion's interface: create_gaussian_diffusion and a diffusion object with the same
methods (q_sample, p_mean_variance, condition_mean, condition_score, p_sample, ddim_sample, the
sampling loops, training_losses and calc_bpd_loop), so ADM scripts run unchanged on fastguide.

As in ADM, the object is always a respaced process (SpacedDiffusion): t passed to its methods
are indices into the kept steps, and the model and cond_fn receive the original timesteps.
Extensions: the sampling methods accept randn_like= (e.g. StackedRandomGenerator.randn_like)
and fused= (the fused step kernels, on by default where they apply); the loops also take
cuda_graph=True (see fastguide.sampling.discrete).
"""
from . import likelihood
from .gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from .respace import space_timesteps
from .schedules import named_betas

__all__ = ["create_gaussian_diffusion", "SpacedDiffusion"]


def _sampling():
    # Imported late: fastguide.sampling builds on fastguide.diffusion.
    from ..sampling import discrete
    return discrete


class SpacedDiffusion(GaussianDiffusion):
    """GaussianDiffusion plus ADM's sampling methods."""

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                 model_kwargs=None, randn_like=None, **options):
        return _sampling().p_sample(self, model, x, t, clip_denoised, denoised_fn, cond_fn,
                                    model_kwargs, randn_like, **options)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                    model_kwargs=None, eta=0.0, randn_like=None, **options):
        return _sampling().ddim_sample(self, model, x, t, clip_denoised, denoised_fn, cond_fn,
                                       model_kwargs, eta, randn_like, **options)

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None,
                            model_kwargs=None, eta=0.0):
        return _sampling().ddim_reverse_sample(self, model, x, t, clip_denoised, denoised_fn,
                                               model_kwargs, eta)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                      cond_fn=None, model_kwargs=None, device=None, progress=False,
                      randn_like=None, **options):
        return _sampling().p_sample_loop(self, model, shape, noise, clip_denoised, denoised_fn,
                                         cond_fn, model_kwargs, device, progress, randn_like, **options)

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True,
                                  denoised_fn=None, cond_fn=None, model_kwargs=None, device=None,
                                  progress=False, randn_like=None, **options):
        return _sampling().p_sample_loop_progressive(self, model, shape, noise, clip_denoised,
                                                     denoised_fn, cond_fn, model_kwargs, device,
                                                     progress, randn_like, **options)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                         cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                         randn_like=None, **options):
        return _sampling().ddim_sample_loop(self, model, shape, noise, clip_denoised, denoised_fn,
                                            cond_fn, model_kwargs, device, progress, eta,
                                            randn_like, **options)

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True,
                                     denoised_fn=None, cond_fn=None, model_kwargs=None,
                                     device=None, progress=False, eta=0.0, randn_like=None, **options):
        return _sampling().ddim_sample_loop_progressive(self, model, shape, noise, clip_denoised,
                                                        denoised_fn, cond_fn, model_kwargs,
                                                        device, progress, eta, randn_like, **options)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None, **options):
        return likelihood.calc_bpd_loop(self, model, x_start, clip_denoised, model_kwargs,
                                        **options)

    def _prior_bpd(self, x_start):
        return likelihood.prior_bpd(self, x_start)

    @property
    def use_timesteps(self):
        """The kept original timesteps, as ADM's SpacedDiffusion exposes them."""
        return set(self.timestep_map.tolist())

    # ADM's private helpers, which some scripts call directly.
    def _predict_xstart_from_eps(self, x_t, t, eps):
        return self.predict_xstart_from_eps(x_t, t, eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return self.predict_eps_from_xstart(x_t, t, pred_xstart)

    def _scale_timesteps(self, t):
        return t  # the mapping happens where the model is called, as in ADM's SpacedDiffusion


def create_gaussian_diffusion(*, steps=1000, learn_sigma=False, sigma_small=False,
                              noise_schedule="linear", use_kl=False, predict_xstart=False,
                              rescale_timesteps=False, rescale_learned_sigmas=False,
                              timestep_respacing=""):
    """The diffusion ADM's script_util builds from its flags."""
    betas = named_betas(noise_schedule, steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        betas=betas,
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )
