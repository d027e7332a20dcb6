"""A discrete ADM network seen as an EDM denoiser D(x, σ) (EDM §5, "improving pre-trained
ADM models"; their iDDPMPrecond).

The discrete process has x_t = √ᾱ_j·(y + σ_j·n) with σ_j = √((1 − ᾱ_j)/ᾱ_j), so

    D(x, σ) = x − σ·ε(x/√(σ² + 1), t_j),   j = the step whose σ_j is nearest σ,

with t_j the timestep the network was trained with. Learned-σ channels are dropped: EDM's
samplers choose their own noise levels. x0- and v-predicting networks are converted likewise.
"""
import torch

from .gaussian import ModelMeanType

__all__ = ["ADMDenoiser"]


class ADMDenoiser(torch.nn.Module):
    """D(x, σ, **model_kwargs) from model(x_t, t, **model_kwargs) and its GaussianDiffusion.

    Only diffusion's ᾱ, timestep map (with rescale_timesteps) and model_mean_type are used, so a
    respaced process restricts the denoiser to the kept steps.
    """

    def __init__(self, model, diffusion, learned_sigma=None):
        super().__init__()
        self.model = model
        self.diffusion = diffusion
        # Defaults to what the process says; pass explicitly for a 2C-channel model used with a
        # fixed-variance process.
        self.learned_sigma = learned_sigma
        self.mean_type = diffusion.model_mean_type
        if self.mean_type == ModelMeanType.PREVIOUS_X:
            raise ValueError("an x_{t-1}-predicting network cannot be turned into a denoiser")
        sigmas = diffusion.sigmas.to(torch.float32)  # σ_j, increasing with j
        self.register_buffer("sigma_table", sigmas, persistent=False)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])

    def sigma_index(self, sigma):
        """Index j of the nearest σ_j (EDM rounds in σ, not log σ)."""
        sigma = torch.as_tensor(sigma)
        table = self.sigma_table.to(sigma.device)
        flat = sigma.reshape(-1, 1).to(table.dtype)
        return (flat - table.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)

    def round_sigma(self, sigma):
        """The nearest σ the network was trained at (keeps shape; dtype of the table)."""
        index = self.sigma_index(sigma)
        return self.sigma_table.to(index.device)[index]

    def _uses_learned_sigma(self):
        if self.learned_sigma is not None:
            return self.learned_sigma
        return self.diffusion.model_var_type.value.startswith("learned")

    def forward(self, x, sigma, **model_kwargs):
        b, c = x.shape[:2]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
        column = sigma.reshape(b, *([1] * (x.dim() - 1)))
        c_in = 1 / (column ** 2 + 1).sqrt()
        t = self.diffusion.model_timesteps(self.sigma_index(sigma))
        out = self.model(c_in * x, t, **model_kwargs)
        expected = 2 * c if self._uses_learned_sigma() else c
        if out.shape != (b, expected, *x.shape[2:]):
            raise ValueError(f"model output has shape {list(out.shape)}, expected "
                             f"{[b, expected, *x.shape[2:]]} for x of shape {list(x.shape)}")
        out = out[:, :c].to(x.dtype)
        if self.mean_type == ModelMeanType.EPSILON:
            return x - column * out
        if self.mean_type == ModelMeanType.START_X:
            return out
        # v = √ᾱ·ε − √(1−ᾱ)·x_0 with √ᾱ = c_in and √(1−ᾱ) = σ·c_in.
        return c_in ** 2 * x - column * c_in * out
