"""Classifier guidance (Dhariwal & Nichol 2021): steer sampling by s·∇_x log p(y | x_t).

  discrete DDPM:  μ' = μ + Σ·s·∇                   (diffusion.condition_mean)
  discrete DDIM:  ε' = ε − √(1 − ᾱ)·s·∇             (diffusion.condition_score)
  σ-samplers:     D'(x, σ) = D(x, σ) + σ²·s·∇_x log p(y | x; σ)   (ClassifierGuidedDenoiser)

The last is the score shift in EDM's terms: ∇_x log p(x; σ) = (D − x)/σ². The gradient is taken
with respect to the input only; the classifier's parameters are frozen meanwhile (no weight
gradients are built, so nothing in the classifier has to be recomputed).
"""
import contextlib

import torch
import torch.nn.functional as F

__all__ = ["frozen", "classifier_log_prob_grad", "classifier_cond_fn", "ADMClassifierGrad",
           "ClassifierGuidedDenoiser", "without_labels"]


@contextlib.contextmanager
def frozen(module):
    """Temporarily set requires_grad=False on every parameter of module (restored on exit)."""
    params = []
    if isinstance(module, torch.nn.Module):
        params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def _require_labels(y, what="classifier guidance"):
    if y is None:
        raise ValueError(f"{what} needs class labels: pass y (e.g. model_kwargs={{'y': labels}})")
    return y


def classifier_log_prob_grad(classifier, x, t, y):
    """∇_x log softmax(classifier(x, t))[y], summed over the batch; same dtype as x."""
    y = _require_labels(y)
    with torch.enable_grad(), frozen(classifier):
        x_in = x.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
        if y.reshape(-1).shape[0] != log_probs.shape[0]:
            raise ValueError(f"{y.numel()} labels for a batch of {log_probs.shape[0]}")
        rows = torch.arange(log_probs.shape[0], device=log_probs.device)
        selected = log_probs[rows, y.reshape(-1)]
        return torch.autograd.grad(selected.sum(), x_in)[0]


def classifier_cond_fn(classifier, classifier_scale):
    """ADM's cond_fn (scripts/classifier_sample.py) for the discrete samplers:
    cond_fn(x, t, y) = classifier_scale·∇_x log p(y | x, t)."""
    def cond_fn(x, t, y=None, **unused):
        return classifier_log_prob_grad(classifier, x, t, y) * classifier_scale
    return cond_fn


class ADMClassifierGrad:
    """∇_x log p(y | x; σ) in EDM's scale for a noisy ADM classifier, seen through an ADMDenoiser:
    the classifier gets x_t = x/√(σ² + 1) at the denoiser's timestep for σ (autograd includes
    the 1/√(σ² + 1) of the chain rule)."""

    def __init__(self, classifier, adm_denoiser):
        self.classifier = classifier
        self.adm_denoiser = adm_denoiser

    def __call__(self, x, sigma, y):
        y = _require_labels(y)
        diffusion = self.adm_denoiser.diffusion
        t = diffusion.model_timesteps(self.adm_denoiser.sigma_index(sigma))
        column = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

        def scaled_classifier(x_in, t):
            return self.classifier(x_in / (column ** 2 + 1).sqrt(), t)
        with frozen(self.classifier):
            return classifier_log_prob_grad(scaled_classifier, x, t, y)


class ClassifierGuidedDenoiser(torch.nn.Module):
    """D'(x, σ) = D(x, σ) + σ²·scale·grad_fn(x, σ, y).

    grad_fn returns ∇_x log p(y | x; σ) in the denoiser's scale (ADMClassifierGrad, or an
    analytic one). Labels come in as extra_args['y']; with model_uses_labels=False they go only
    to the classifier (guiding an unconditional model).
    """

    def __init__(self, denoiser, grad_fn, scale, model_uses_labels=True):
        super().__init__()
        self.denoiser = denoiser
        self.grad_fn = grad_fn
        self.scale = float(scale)
        self.model_uses_labels = model_uses_labels

    def round_sigma(self, sigma):
        inner = getattr(self.denoiser, "round_sigma", None)
        return inner(sigma) if inner is not None else torch.as_tensor(sigma)

    def forward(self, x, sigma, y=None, **model_kwargs):
        _require_labels(y)
        if self.model_uses_labels:
            model_kwargs["y"] = y
        denoised = self.denoiser(x, sigma, **model_kwargs)
        if self.scale == 0:
            return denoised
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        sigma = sigma.reshape(-1).expand(x.shape[0])
        grad = self.grad_fn(x, sigma, y)
        column = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return denoised + column ** 2 * self.scale * grad.to(denoised.dtype)


def without_labels(model):
    """Wrap an unconditional network so that it ignores a y keyword argument: lets the discrete
    loops pass model_kwargs={'y': labels} to the cond_fn only."""
    def model_fn(x, t, y=None, **model_kwargs):
        return model(x, t, **model_kwargs)
    return model_fn
