"""The training step: forward + backward + AdamW, on ADM's hybrid loss (L_simple + L_vb with
learned variances), as guided-diffusion trains its ImageNet 64 model (cosine schedule).

The trunk runs in the backend's dtype with its weights in that dtype too (no fp32 master copy
or loss scaling: those are elementwise work that the FLOP count ignores anyway); norms,
embeddings and the head stay fp32, as with use_fp16.
"""
import torch

from ..diffusion import create_gaussian_diffusion
from .backends import configure, memory_format, set_layout
from .flops import train_flops
from .forward import base_row, throughput_fields
from .models import build, example_inputs, model_config
from .results import error_row
from .timing import timed_runs

__all__ = ["measure_train", "train_rows"]


def _diffusion(name):
    schedule = "cosine" if model_config(name)["image_size"] == 64 else "linear"
    return create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule=schedule)


def _train_model(name, backend, device, dtype):
    model = build(name, device, dtype=dtype)
    configure(model, backend.norm, backend.attention)
    return set_layout(model, backend).train()


def measure_train(name, batch, backend, device, dtype, timing):
    model = _train_model(name, backend, device, dtype)
    # fused AdamW: one kernel for all parameters (CUDA); the default foreach one elsewhere.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    diffusion = _diffusion(name)
    (x0, _), kwargs = example_inputs(name, batch, device, memory_format=memory_format(backend))
    t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)

    def step():
        loss = diffusion.training_losses(model, x0, t, model_kwargs=kwargs)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    stats = timed_runs(step, device, **timing)
    flops = train_flops(name)["total"]
    return {"status": "ok", "dtype": str(dtype).removeprefix("torch."),
            "layout": "channels_last" if backend.channels_last else "contiguous",
            "flops_per_img": flops, **stats, **throughput_fields(flops, batch, stats, device)}


def train_rows(name, batches, backends, device, dtype_override, timing):
    for backend in backends:
        for batch in batches:
            base = base_row(name, batch, backend)
            try:
                yield {**base, **measure_train(name, batch, backend, device,
                                               dtype_override or backend.dtype, timing)}
            except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
                yield error_row(base, exc)
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
