"""End-to-end guided sampling (ADM-G): seconds per image for a whole sampling loop, against the
FLOP lower bound (FLOPs per image / peak).

    cfg         classifier-free guidance: one model call on a 2B batch per step
                (ClassifierFreeGuidance, the model built with a null class)
    classifier  classifier guidance: model call + classifier forward and input-gradient per step
                (classifier_cond_fn, ADM's cond_fn)

The loops are fastguide's ADM loops (p_sample_loop for DDPM, ddim_sample_loop for DDIM) on a
respaced process; the backend's fused flag picks the fused step kernels (fused=True) or the
pure-PyTorch step (fused=False), and the CUDA-graph backend passes cuda_graph=True (capture is
part of the timed loop, as it is for a user).
"""
import torch

from ..diffusion import create_gaussian_diffusion
from ..sampling import ClassifierFreeGuidance, classifier_cond_fn, ddim_sample_loop, p_sample_loop
from .backends import prepare
from .flops import peak_flops, sampling_step_flops
from .models import build, model_config
from .results import error_row
from .timing import timed_runs

__all__ = ["LOOPS", "SamplingSetup", "sampling_base_row", "measure_sampling", "sampling_row"]

LOOPS = {"ddpm": p_sample_loop, "ddim": ddim_sample_loop}
CFG_SCALE = 3.0        # any value: the work per step does not depend on it
CLASSIFIER_SCALE = 1.0  # ADM-G 256's classifier_scale


def sampling_base_row(pair, guidance, sampler, steps, batch, backend):
    return {"model": pair[0], "classifier": pair[1] if guidance == "classifier" else None,
            "guidance": guidance, "sampler": sampler, "steps": steps, "batch": batch,
            "backend": backend.name}


class SamplingSetup:
    """The model (with a null class, for CFG) and the classifier of a guided pair, on device."""

    def __init__(self, pair, device):
        self.pair = pair
        self.device = torch.device(device)
        self.model = build(pair[0], device, null_class=True)
        self.classifier = build(pair[1], device)
        cfg = model_config(pair[0])
        self.image_shape = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        self.num_classes = cfg["num_classes"]

    def loop_fn(self, guidance, sampler, steps, batch, backend, dtype):
        """A zero-argument function that samples `batch` images."""
        prepare(self.model, backend, dtype)
        prepare(self.classifier, backend, dtype)
        diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True,
                                              noise_schedule="linear",
                                              timestep_respacing=str(steps))
        gen = torch.Generator(device=self.device).manual_seed(0)
        y = torch.randint(0, self.num_classes, (batch,), device=self.device, generator=gen)
        noise = torch.randn(batch, *self.image_shape, device=self.device, generator=gen)
        model, cond_fn = self.model, None
        if guidance == "cfg":
            model = ClassifierFreeGuidance(self.model, CFG_SCALE, null_label=self.model.null_label)
        else:
            cond_fn = classifier_cond_fn(self.classifier, CLASSIFIER_SCALE)
        fused = backend.norm == "fused"
        options = dict(noise=noise, cond_fn=cond_fn, model_kwargs={"y": y}, fused=fused,
                       cuda_graph=backend.cuda_graph)
        return lambda: LOOPS[sampler](diffusion, model, noise.shape, **options)


def measure_sampling(setup, guidance, sampler, steps, batch, backend, dtype, timing):
    fn = setup.loop_fn(guidance, sampler, steps, batch, backend, dtype)
    stats = timed_runs(fn, setup.device, **timing)
    flops = steps * sampling_step_flops(setup.pair[0], guidance, setup.pair[1])
    s_per_img = stats["time_s"] / batch
    peak = peak_flops(setup.device)
    bound = flops / peak if peak else None
    return {"status": "ok", "dtype": str(dtype).removeprefix("torch."), "flops_per_img": flops,
            **stats, "s_per_img": s_per_img, "flops_per_s": flops / s_per_img,
            "bound_s_per_img": bound, "x_bound": s_per_img / bound if bound else None,
            "mfu": bound / s_per_img if bound else None}


def sampling_row(setup, guidance, sampler, steps, batch, backend, dtype, timing):
    base = sampling_base_row(setup.pair, guidance, sampler, steps, batch, backend)
    try:
        return {**base, **measure_sampling(setup, guidance, sampler, steps, batch, backend,
                                           dtype, timing)}
    except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
        return error_row(base, exc)
    finally:
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
