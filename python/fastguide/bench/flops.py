"""FLOP accounting, the method of shared/reference/adm_flops.md: torch.utils.flop_counter's
formulas on the meta device (no memory, no compute), FLOPs = 2 x multiply-accumulates.

Counted: convolutions, addmm/mm (Linear, and the 1x1 attention projections, which fastguide
applies as matmuls), bmm (the attention einsums: the reference attention backend is used for
counting, so attention lowers to bmm exactly as in guided-diffusion). Not counted: norms,
activations, softmax, adds, resampling (memory-bound, no matmul FLOPs).

One known difference from the table: guided-diffusion's AttentionPool2d applies c_proj to every
token and keeps token 0; fastguide projects token 0 only, so a classifier forward here is
2 * C * classes * H*W FLOPs lower (0.066 GFLOPs for the released classifiers).
"""
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import build, example_inputs

__all__ = ["PEAK_FLOPS", "peak_flops", "forward_flops", "train_flops", "guidance_flops",
           "sampling_step_flops"]

# Dense bf16 matmul peak measured on the H100/H200 hosts (adm_flops.md); fp16 is the same.
PEAK_FLOPS = {"cuda": 790e12}


def peak_flops(device):
    """The FLOP/s that MFU divides by, or None (no MFU on a CPU)."""
    return PEAK_FLOPS.get(torch.device(device).type)


def _meta_model(name):
    model = build(name, device="meta")
    model.set_backend("reference")  # attention as einsum -> bmm, as in the table
    return model


def _summary(counter):
    counts = counter.get_flop_counts()["Global"]
    by_op = {str(op).removeprefix("aten."): n for op, n in counts.items()}
    return {"total": counter.get_total_flops(), "by_op": by_op}


@functools.cache
def forward_flops(name):
    """FLOPs of one forward pass for one image: {"total", "by_op", "params"}."""
    model = _meta_model(name)
    args, kwargs = example_inputs(name, 1, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    return {**_summary(counter), "params": model.num_parameters()}


@functools.cache
def train_flops(name):
    """FLOPs of forward + backward (weight and activation gradients) for one image. The
    optimizer and the loss are elementwise: not counted."""
    model = _meta_model(name)
    args, kwargs = example_inputs(name, 1, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(*args, **kwargs).float().square().mean().backward()
    return _summary(counter)


@functools.cache
def guidance_flops(name):
    """FLOPs of one classifier-guidance gradient for one image: the classifier forward plus the
    backward to its input, weights frozen (what fastguide's cond_fn computes). guided-diffusion
    also recomputes its checkpointed attention and takes their weight gradients, so its figure
    (adm_flops.md's "guidance" column) is a little higher."""
    model = _meta_model(name).requires_grad_(False)
    (x, t), _ = example_inputs(name, 1, device="meta")
    x.requires_grad_(True)
    counter = FlopCounterMode(display=False)
    # .backward() rather than autograd.grad: FlopCounterMode's module hooks reject the latter.
    with counter:
        log_probs = torch.log_softmax(model(x, t).float(), dim=-1)
        log_probs[:, 0].sum().backward()
    return _summary(counter)


def sampling_step_flops(model_name, guidance, classifier_name=None):
    """FLOPs per image per sampling step: CFG runs the model on 2 rows per image; classifier
    guidance runs the model once plus one guidance gradient."""
    fwd = forward_flops(model_name)["total"]
    if guidance == "cfg":
        return 2 * fwd
    if guidance == "classifier":
        return fwd + guidance_flops(classifier_name)["total"]
    raise ValueError(f"guidance must be 'cfg' or 'classifier', got {guidance!r}")
