"""GuidedSampler: one model, its diffusion process and every guidance option, turned into
`x = sampler(seeds, labels)`, a batch of images in [−1, 1] that depends only on the seeds.

Two families of samplers:
  * "ddpm" and "ddim" run guided-diffusion's own loops on the respaced discrete process
    (fused step kernels, ADM's clipping and its two forms of classifier guidance);
  * every other name runs a σ-sampler of fastguide.sampling.SAMPLERS on the network seen as an
    EDM denoiser D(x, σ) (ADMDenoiser), over a σ schedule (karras by default).

Guidance is built as wrappers, so every kind composes with every other and with every sampler:
  ε-level (inside the network call): classifier-free guidance (with rescale), autoguidance;
  x₀-level: clipping / dynamic thresholding, classifier guidance, guidance by a function of x₀.
A guidance schedule w(σ) and the guidance interval scale CFG, autoguidance and classifier
guidance alike.
"""
import functools
import math

import torch

from ..diffusion import ADMDenoiser, create_gaussian_diffusion, edm_sigmas
from ..sampling import (SAMPLERS, SCHEDULES, ADMClassifierGrad, ClassifierFreeGuidance,
                        ClassifierGuidedDenoiser, StackedRandomGenerator,
                        classifier_log_prob_grad, ddim_sample_loop_progressive,
                        p_sample_loop_progressive, sampler_options, without_labels)
from ..sampling.autoguidance import AutoGuidance
from ..sampling.guidance_scale import RAMPS, GuidanceScale
from ..sampling.thresholding import DynamicThreshold, ThresholdedDenoiser, static_clip
from ..sampling.x0_guidance import X0Guidance, x0_cond_fn
from .settings import DiffusionSettings

__all__ = ["GuidedSampler", "OptionError", "DISCRETE_SAMPLERS", "sampler_names",
           "SIGMA_MAX_CAP"]

DISCRETE_SAMPLERS = ("ddpm", "ddim")
SIGMA_MAX_CAP = 80.0  # EDM's σ_max; the cosine schedule's last σ is ~10⁴
SAMPLER_OPTIONS = {"ddim": ("eta",), "ddpm": ()}


class OptionError(ValueError):
    """A bad sampling option; .option is the keyword argument's name (the CLI maps it to its
    flag), .detail the rest of the message."""

    def __init__(self, option, detail):
        self.option, self.detail = option, detail
        super().__init__(f"{option} {detail}")


def sampler_names():
    return DISCRETE_SAMPLERS + tuple(k for k in SAMPLERS if k not in DISCRETE_SAMPLERS)


def sigma_options(name):
    """Option names the σ-sampler `name` accepts that a user may set (per-seed noise is the
    pipeline's own business)."""
    return tuple(o for o in sampler_options(name) if o not in ("randn_like", "noise_sampler"))


def _nearest_in(table):
    """σ -> the nearest level of table (EDM rounds in σ, as ADMDenoiser does)."""
    def round_sigma(sigma):
        sigma = torch.as_tensor(sigma, dtype=table.dtype)
        index = (sigma.reshape(-1, 1) - table.reshape(1, -1)).abs().argmin(dim=1)
        return table[index].reshape(sigma.shape)
    return round_sigma


def _accepts(fn, name):
    import inspect
    return name in inspect.signature(fn).parameters


def _scale(name, value):
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise OptionError(name, f"must be a finite number >= 0, got {value:g}")
    return value


class _NullLabel(torch.nn.Module):
    """The model run on its null label whatever y is (the unconditional half of a CFG model)."""

    def __init__(self, model, null_label):
        super().__init__()
        self.model, self.null_label = model, null_label

    def forward(self, x, t, y=None, **kwargs):
        y = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        return self.model(x, t, y=y, **kwargs)


class GuidedSampler:
    """See the module docstring. model: a loaded UNet / SuperResUNet; diffusion: its process
    (DiffusionSettings or a dict with steps, noise_schedule, learn_sigma).

    Guidance: cfg_scale w (needs a null-class model), cfg_rescale φ, autoguidance_scale with
    weak_model, classifier_scale with classifier (None: 1.0 when a classifier is given),
    guidance_schedule (a ramp name or a callable of σ) and guidance_interval (σ_lo, σ_hi),
    dynamic_threshold (a percentile), x0_guidance f(x0, sigma, **kw) with x0_guidance_scale.
    clip_denoised clamps every x₀ prediction to [−1, 1] (guided-diffusion's default).
    schedule / schedule_options: the σ schedule of a σ-sampler (default "karras", ρ = 7).
    sampler_options: the sampler's own options (eta for ddim; churn etc. for σ-samplers).
    .notes holds what a user should be told (defaults chosen, options that change nothing).
    """

    def __init__(self, model, diffusion, sampler="ddim", steps=50, *, classifier=None,
                 weak_model=None, cfg_scale=0.0, cfg_rescale=0.0, autoguidance_scale=0.0,
                 classifier_scale=None, guidance_schedule=None, guidance_interval=None,
                 unconditional=False, clip_denoised=True, dynamic_threshold=None,
                 x0_guidance=None, x0_guidance_scale=1.0, x0_through_denoiser=True,
                 schedule=None, schedule_options=None, sampler_options=None):
        self.notes = []
        self.model, self.sampler = model, sampler
        self.settings = self._settings(diffusion)
        if sampler not in sampler_names():
            raise OptionError("sampler", f"must be one of {list(sampler_names())}, got "
                                         f"{sampler!r}")
        self.discrete = sampler in DISCRETE_SAMPLERS
        self.steps = self._steps(steps)
        self.sampler_options = self._sampler_options(sampler_options or {})
        self.classifier, self.weak_model = classifier, weak_model
        self.conditional = getattr(model, "num_classes", None) is not None
        self.num_classes = (model.num_classes if self.conditional
                            else getattr(classifier, "out_channels", None))
        self.clip_denoised = bool(clip_denoised)
        self.threshold = None
        if dynamic_threshold is not None:
            try:
                self.threshold = DynamicThreshold(dynamic_threshold)
            except (TypeError, ValueError):
                raise OptionError("dynamic_threshold", f"must be a percentile in (0, 1], got "
                                                       f"{dynamic_threshold!r}") from None
        self.unconditional = bool(unconditional)

        self.process = create_gaussian_diffusion(
            steps=self.settings.steps, noise_schedule=self.settings.noise_schedule,
            learn_sigma=self.settings.learn_sigma,
            timestep_respacing=self._respacing() if self.discrete else "")
        self._full_sigmas = create_gaussian_diffusion(
            steps=self.settings.steps, noise_schedule=self.settings.noise_schedule,
            learn_sigma=self.settings.learn_sigma).sigmas.to(torch.float64)
        self.sigmas = None if self.discrete else self._sigma_schedule(schedule, schedule_options)
        if self.discrete and (schedule is not None or schedule_options):
            raise OptionError("schedule", f"does not apply to --sampler {sampler}: guided-"
                              "diffusion's loops take their steps from the respaced process; "
                              "use a σ-sampler (e.g. euler, heun, dpmpp_2m) to choose a schedule")
        self._guidance(cfg_scale, cfg_rescale, autoguidance_scale, classifier_scale,
                       guidance_schedule, guidance_interval, x0_guidance, x0_guidance_scale,
                       x0_through_denoiser)

    # ---- validation --------------------------------------------------------------------------

    @staticmethod
    def _settings(diffusion):
        if isinstance(diffusion, DiffusionSettings):
            return diffusion
        d = dict(diffusion)
        return DiffusionSettings(steps=int(d.get("steps", 1000)),
                                 noise_schedule=d.get("noise_schedule", "linear"),
                                 learn_sigma=bool(d.get("learn_sigma", False)), source="given")

    def _steps(self, steps):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise OptionError("steps", f"must be a positive integer, got {steps!r}")
        if self.discrete and steps > self.settings.steps:
            raise OptionError("steps", f"must be in 1..{self.settings.steps} (the process's "
                                       f"steps) for --sampler {self.sampler}, got {steps}")
        return steps

    def _respacing(self):
        spec = f"ddim{self.steps}" if self.sampler == "ddim" else str(self.steps)
        try:
            create_gaussian_diffusion(steps=self.settings.steps, timestep_respacing=spec)
        except ValueError:
            # ADM's "ddimN" needs an integer stride giving exactly N steps; an even spacing
            # ("N") always exists and is what its other samplers use.
            self.notes.append(f"{self.steps} DDIM steps cannot be taken with one integer stride "
                              f"from {self.settings.steps}; using guided-diffusion's even "
                              f"spacing \"{self.steps}\" instead")
            spec = str(self.steps)
        return spec

    def _sampler_options(self, options):
        accepted = SAMPLER_OPTIONS.get(self.sampler) if self.discrete else sigma_options(
            self.sampler)
        for name, value in options.items():
            if name not in accepted:
                raise OptionError(name, f"does not apply to --sampler {self.sampler} (it takes "
                                        f"{', '.join(accepted) or 'no options'})")
            if isinstance(value, float) and not math.isfinite(value) and name != "S_max":
                raise OptionError(name, f"must be finite, got {value}")
        return dict(options)

    def _sigma_schedule(self, schedule, options):
        table = self._full_sigmas
        sigma_min, sigma_max = float(table[0]), min(float(table[-1]), SIGMA_MAX_CAP)
        name = schedule or "karras"
        options = dict(options or {})
        round_sigma = _nearest_in(table)
        if name == "karras":
            rho = float(options.pop("rho", 7.0))
            if not math.isfinite(rho) or rho <= 0:
                raise OptionError("rho", f"must be a finite number > 0, got {rho:g}")
            if options:
                raise OptionError(next(iter(options)), "does not apply to the karras schedule")
            sigmas = edm_sigmas(self.steps, sigma_min, sigma_max, rho=rho,
                                round_sigma=round_sigma)
        else:
            if name not in SCHEDULES:
                raise OptionError("schedule", f"must be one of {sorted(SCHEDULES)}, got "
                                              f"{name!r}")
            if name == "discrete":
                options["sigma_table"] = table
            try:
                sigmas = SCHEDULES[name](self.steps, sigma_min, sigma_max, **options)
            except (TypeError, ValueError) as e:
                raise OptionError("schedule", f"{name}: {e}") from None
            sigmas = torch.cat([round_sigma(sigmas[:-1]).to(sigmas), sigmas[-1:]])
        # Rounding to the network's σ table can merge neighbouring levels: drop repeats.
        return torch.unique_consecutive(sigmas.to(torch.float64))

    # ---- guidance ----------------------------------------------------------------------------

    def sigma_of(self, t):
        """σ of the timesteps the network receives (original-scale indices)."""
        table = self._full_sigmas.to(t.device)
        return table[t.round().long().clamp(0, len(table) - 1)]

    def _sigma_range(self):
        if self.discrete:
            s = self.process.sigmas.to(torch.float64)
            return float(s[0]), float(s[-1])
        nonzero = self.sigmas[self.sigmas > 0]
        return float(nonzero.min()), float(nonzero.max())

    def _check_guidance_models(self, cfg_scale, autoguidance_scale, classifier_scale):
        null = getattr(self.model, "null_label", None)
        if cfg_scale and null is None:
            raise OptionError("cfg_scale", "needs a model trained with a null class "
                                           "(classifier-free guidance's unconditional branch)")
        if self.unconditional and self.conditional and null is None:
            raise OptionError("unconditional", "needs an unconditional or null-class model")
        if autoguidance_scale and self.weak_model is None:
            raise OptionError("autoguidance_scale", "needs a weak model (weak_model / "
                                                    "--weak-model)")
        if self.weak_model is not None and not autoguidance_scale:
            self.notes.append("a weak model was given without an autoguidance scale: it is not "
                              "used")
        if self.weak_model is not None:
            self._check_weak_model()
        if classifier_scale and self.classifier is None:
            raise OptionError("classifier_scale", "needs a classifier")
        if self.classifier is not None:
            k = getattr(self.model, "num_classes", None)
            if k is not None and self.classifier.out_channels != k:
                raise OptionError("classifier", f"predicts {self.classifier.out_channels} "
                                                f"classes but the model has {k}")

    def _check_weak_model(self):
        strong, weak = self.model, self.weak_model
        if weak.config["in_channels"] != strong.config["in_channels"]:
            raise OptionError("weak_model", f"takes {weak.config['in_channels']} channels, the "
                                            f"model {strong.config['in_channels']}")
        if getattr(weak, "num_classes", None) != getattr(strong, "num_classes", None):
            raise OptionError("weak_model", f"has num_classes={weak.num_classes}, the model "
                                            f"{strong.num_classes}: autoguidance evaluates both "
                                            "on the same condition")
        if self.unconditional and self.conditional and getattr(weak, "null_label", None) is None:
            raise OptionError("weak_model", "needs a null class to be run unconditionally")

    def _guidance(self, cfg_scale, cfg_rescale, autoguidance_scale, classifier_scale,
                  guidance_schedule, guidance_interval, x0_guidance, x0_guidance_scale,
                  through):
        cfg_scale = _scale("cfg_scale", cfg_scale)
        autoguidance_scale = _scale("autoguidance_scale", autoguidance_scale)
        if classifier_scale is None:
            classifier_scale = 1.0 if self.classifier is not None else 0.0
            if self.classifier is not None:
                self.notes.append("a classifier was given without a classifier scale: using "
                                  "guided-diffusion's default, 1.0")
        classifier_scale = _scale("classifier_scale", classifier_scale)
        cfg_rescale = _scale("cfg_rescale", cfg_rescale)
        if cfg_rescale > 1:
            raise OptionError("cfg_rescale", f"must be in [0, 1], got {cfg_rescale:g}")
        if cfg_rescale and not cfg_scale:
            self.notes.append("cfg_rescale has no effect without classifier-free guidance")
        self._check_guidance_models(cfg_scale, autoguidance_scale, classifier_scale)
        if isinstance(guidance_schedule, str) and guidance_schedule not in RAMPS:
            raise OptionError("guidance_schedule", f"must be one of {list(RAMPS)} or a callable "
                                                   f"of sigma, got {guidance_schedule!r}")
        if (guidance_schedule is not None or guidance_interval is not None) and not (
                cfg_scale or autoguidance_scale or classifier_scale):
            self.notes.append("the guidance schedule / interval has no effect without guidance")

        def scale(w):
            try:
                return GuidanceScale(w, guidance_schedule, guidance_interval, self._sigma_range())
            except ValueError as e:
                name = "guidance_interval" if "interval" in str(e) else "guidance_schedule"
                raise OptionError(name, str(e)) from None
        self.cfg = scale(cfg_scale)
        self.autoguidance = scale(autoguidance_scale)
        self.classifier_guidance = scale(classifier_scale)
        self.cfg_rescale = cfg_rescale
        if x0_guidance is not None and not callable(x0_guidance):
            raise OptionError("x0_guidance", "must be a callable f(x0, sigma, **kwargs)")
        self.x0_guidance, self.x0_through = x0_guidance, bool(through)
        self.x0_scale = _scale("x0_guidance_scale", x0_guidance_scale)
        self.net = self._network()

    def _label_mode(self, model):
        """model as called by the loops: on the null label, or ignoring y, or as is."""
        if self.unconditional and self.conditional:
            return _NullLabel(model, model.null_label)
        if not self.conditional:
            return without_labels(model)
        return model

    def _network(self):
        """The ε-network with CFG and autoguidance inside it."""
        net = self._label_mode(self.model)
        if self.cfg.scale:
            net = ClassifierFreeGuidance(net, self.cfg, null_label=self.model.null_label,
                                         rescale=self.cfg_rescale, sigma_of=self.sigma_of)
        if self.autoguidance.scale:
            net = AutoGuidance(net, self._label_mode(self.weak_model), self.autoguidance,
                               sigma_of=self.sigma_of)
        return net

    # ---- sampling ----------------------------------------------------------------------------

    @property
    def num_steps(self):
        """Steps one batch takes (what a progress bar counts)."""
        return self.process.num_timesteps if self.discrete else len(self.sigmas) - 1

    def image_shape(self, low_res=None):
        size = self.model.config["image_size"]
        if size is None:
            flag = "upsample_image_size" if low_res is not None else "image_size"
            raise OptionError(flag, "is needed: the model has no image_size (a guided-diffusion "
                                    ".pt of a custom architecture does not store it)")
        return (self.model.config["in_channels"], size, size)

    def __call__(self, seeds, labels, device="cpu", on_step=None, **model_kwargs):
        """Images in [−1, 1] for the seeds (one per seed), conditioned on labels (a list or
        None). on_step() is called after every sampler step."""
        rng = StackedRandomGenerator(seeds, device)
        shape = (len(seeds), *self.image_shape(model_kwargs.get("low_res")))
        kwargs = dict(model_kwargs)
        if labels is not None:
            kwargs["y"] = torch.as_tensor(labels, dtype=torch.long, device=device)
        if self.discrete:
            return self._discrete(rng, shape, kwargs, device, on_step)
        return self._sigma_sample(rng, shape, kwargs, device, on_step)

    def _classifier_grad(self, grad_fn, x, t_or_sigma, y, sigma):
        """w(σ)·grad_fn(x, t_or_sigma, y), the classifier not run where w is zero for the whole
        batch (outside the guidance interval)."""
        w = self.classifier_guidance(sigma)
        if self.classifier_guidance.off(w):
            return torch.zeros_like(x)
        return w.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * grad_fn(x, t_or_sigma, y)

    def _discrete_cond_fn(self):
        fns = []
        if self.classifier_guidance.scale:
            grad = functools.partial(classifier_log_prob_grad, self.classifier)
            fns.append(lambda x, t, y=None, **kw: self._classifier_grad(grad, x, t, y,
                                                                          self.sigma_of(t)))
        if self.x0_guidance is not None and self.x0_scale:
            fns.append(x0_cond_fn(self.x0_guidance, ADMDenoiser(self.net, self.process,
                                                                self.model.learn_sigma),
                                  self.sigma_of, self.x0_scale, self.x0_through))
        if not fns:
            return None
        return lambda x, t, **kw: sum(fn(x, t, **kw) for fn in fns)

    def _discrete(self, rng, shape, kwargs, device, on_step):
        loop = (ddim_sample_loop_progressive if self.sampler == "ddim"
                else p_sample_loop_progressive)
        out = None
        for out in loop(self.process, self.net, shape, cond_fn=self._discrete_cond_fn(),
                        model_kwargs=kwargs, device=device, randn_like=rng.randn_like,
                        clip_denoised=self.clip_denoised, denoised_fn=self.threshold,
                        **self.sampler_options):
            if on_step is not None:
                on_step()
        return out["sample"]

    def denoiser(self):
        """The network as a guided σ-denoiser D(x, σ, **kwargs)."""
        adm = ADMDenoiser(self.net, self.process, learned_sigma=self.model.learn_sigma)
        denoiser = adm
        if self.threshold is not None:
            denoiser = ThresholdedDenoiser(denoiser, self.threshold)
        if self.clip_denoised:
            denoiser = ThresholdedDenoiser(denoiser, static_clip)
        if self.classifier_guidance.scale:
            grad = ADMClassifierGrad(self.classifier, adm)
            denoiser = ClassifierGuidedDenoiser(
                denoiser, lambda x, sigma, y: self._classifier_grad(grad, x, sigma, y, sigma), 1.0)
        if self.x0_guidance is not None and self.x0_scale:
            denoiser = X0Guidance(denoiser, self.x0_guidance, self.x0_scale, self.x0_through)
        return denoiser

    def _sigma_sample(self, rng, shape, kwargs, device, on_step):
        sigmas = self.sigmas.to(device)
        x = rng.randn(shape, device=device) * sigmas[0].to(torch.float32)
        out = self.sigma_steps(x, sigmas, kwargs, rng, on_step)
        return out.clamp(-1, 1) if self.clip_denoised else out

    def sigma_steps(self, x, sigmas, kwargs, rng, on_step=None, denoiser=None):
        """The σ-sampler run from x at sigmas[0] over sigmas (all of self.sigmas, or a part of
        it, as image editing does), drawing its noise from rng; denoiser defaults to
        self.denoiser(). No final clamp."""
        callback = (lambda info: on_step()) if on_step is not None else None
        fn = SAMPLERS[self.sampler]
        noise = {"randn_like": rng.randn_like} if _accepts(fn, "randn_like") else {}
        with torch.no_grad():  # guidance that needs autograd enables it inside the denoiser
            return fn(self.denoiser() if denoiser is None else denoiser, x, sigmas.to(x.device), extra_args=kwargs,
                      callback=callback, disable=True, **noise, **self.sampler_options)

    def cond_fn(self):
        """The discrete loops' cond_fn (classifier and x0 guidance), or None without them."""
        return self._discrete_cond_fn()
