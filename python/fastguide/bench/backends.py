"""The five ways of running a model that the benchmarks put side by side.

    gd_fp16       (a) guided-diffusion's eager path: fp16 trunk, GroupNorm upcast to fp32
                      (norm backend "reference"), einsum attention, contiguous layout
    eager_bf16    (b) what a user would pick in eager PyTorch: bf16 trunk, reference norms,
                      torch's SDPA attention, channels_last
    compile_bf16  (c) torch.compile(mode="max-autotune") of (b)
    fused_bf16    (d) fastguide: model.set_backend("fused"), bf16, channels_last
    fused_graph   (e) (d) captured once in a CUDA graph and replayed

Each is a switch setting on the same fastguide model, so every backend runs the same weights
and the same FLOPs.
"""
import dataclasses

import torch

from ..nn import AttentionBlock, AttentionPool2d, GroupNormAct

__all__ = ["Backend", "BACKENDS", "unavailable_reason", "configure", "prepare", "memory_format",
           "set_layout", "cuda_graphed"]


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    label: str
    dtype: torch.dtype
    norm: str            # GroupNormAct.backend: "fused" | "reference"
    attention: str       # AttentionBlock / AttentionPool2d backend: "fused" | "sdpa" | "reference"
    channels_last: bool
    compile_mode: str = None
    cuda_graph: bool = False

    def describe(self, dtype=None):
        return {"label": self.label, "dtype": str(dtype or self.dtype).removeprefix("torch."),
                "norm": self.norm, "attention": self.attention,
                "layout": "channels_last" if self.channels_last else "contiguous",
                "compile_mode": self.compile_mode, "cuda_graph": self.cuda_graph}


BACKENDS = {b.name: b for b in [
    Backend("gd_fp16", "(a) guided-diffusion eager", torch.float16, "reference", "reference",
            channels_last=False),
    Backend("eager_bf16", "(b) eager + SDPA + channels_last", torch.bfloat16, "reference",
            "sdpa", channels_last=True),
    Backend("compile_bf16", "(c) torch.compile max-autotune of (b)", torch.bfloat16, "reference",
            "sdpa", channels_last=True, compile_mode="max-autotune"),
    Backend("fused_bf16", "(d) fastguide fused", torch.bfloat16, "fused", "fused",
            channels_last=True),
    Backend("fused_graph", "(e) fastguide fused + CUDA graph", torch.bfloat16, "fused",
            "fused", channels_last=True, cuda_graph=True),
]}


def unavailable_reason(backend, device):
    """Why `backend` cannot run on `device` at all, or None."""
    device = torch.device(device)
    if backend.cuda_graph and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if backend.compile_mode == "max-autotune" and device.type != "cuda":
        return ("max-autotune tunes GPU kernels (Triton templates); on a CPU it only adds "
                "compile time")
    return None


def configure(model, norm, attention):
    """Set the kernel switches of every norm and attention layer. Done per layer rather than
    with model.set_backend, because attention may take "sdpa", which norms do not have."""
    for m in model.modules():
        if isinstance(m, GroupNormAct):
            m.backend = norm
        elif isinstance(m, (AttentionBlock, AttentionPool2d)):
            m.backend = attention
    return model


def memory_format(backend):
    return torch.channels_last if backend.channels_last else torch.contiguous_format


def set_layout(model, backend):
    """Conv2d weights in the backend's memory format (the only 4-D parameters)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=memory_format(backend))
    return model


def prepare(model, backend, dtype=None):
    """Put `model` (in place) into the backend's precision, kernels and layout; eval mode and
    frozen weights. dtype overrides the backend's (CPU suites run fp32)."""
    model.convert_trunk(dtype or backend.dtype)
    configure(model, backend.norm, backend.attention)
    set_layout(model, backend)
    return model.eval().requires_grad_(False)


def cuda_graphed(fn, args, kwargs, warmup=3):
    """Capture fn(*args, **kwargs) in a CUDA graph (static inputs); returns (replay, graph).
    Warm-up runs on a side stream first, so lazy initialisation stays out of the capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            fn(*args, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        fn(*args, **kwargs)
    return graph.replay, graph
