"""What each suite runs, how long it may take, and why a backend is left out where it is.
On a CPU every suite runs fp32 (cpu_dtype).

    gpu   the full grid for an H100/H200 in about 8 minutes (time_budget_s): ImageNet 64-512 and
          their classifiers at batch 1, 8, 32 on all five backends; the ImageNet 64 training
          step (batch 16); ADM-G-256 sampling (25 DDIM and 250 DDPM steps, CFG and classifier
          guidance) at guided-diffusion's --batch_size 4. torch.compile cells run last, each
          model in a subprocess killed when the budget runs out (max-autotune compiles take
          minutes).
    cpu   under a minute on a laptop-class CPU: the tiny configs plus one real preset at batch 1.
    tiny  seconds: what the tests run (tests/test_bench_harness.py on the CPU,
          tests/test_bench_cuda.py on a GPU).
"""
import dataclasses

import torch

from .backends import BACKENDS, unavailable_reason

__all__ = ["Suite", "SUITES", "SamplingRun"]

ALL = tuple(BACKENDS)
EAGER_AND_FUSED = ("gd_fp16", "eager_bf16", "fused_bf16")


@dataclasses.dataclass(frozen=True)
class SamplingRun:
    steps: int
    sampler: str          # "ddim" | "ddpm"
    backends: tuple
    timing: dict


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    forward_models: tuple
    forward_batches: tuple
    forward_backends: tuple
    forward_timing: dict
    train_models: tuple
    train_batches: tuple
    train_backends: tuple
    train_timing: dict
    sampling_pair: tuple          # (model, classifier)
    sampling_batch: int
    sampling_runs: tuple          # of SamplingRun
    time_budget_s: float
    # CPU low-precision convolutions are slow emulations, not what a CPU user runs: on a CPU
    # every backend runs this dtype instead of its own.
    cpu_dtype: torch.dtype = torch.float32
    forward_batches_for: dict = dataclasses.field(default_factory=dict)  # model -> batches
    excluded: dict = dataclasses.field(default_factory=dict)  # (section, backend) -> reason

    def dtype_override(self, device):
        """The dtype every backend runs on `device` instead of its own, or None."""
        return self.cpu_dtype if torch.device(device).type == "cpu" else None

    def batches_for(self, model):
        return self.forward_batches_for.get(model, self.forward_batches)

    def skip_reason(self, section, backend_name, device, listed):
        """Why `backend_name` does not run in `section`, or None when it does."""
        reason = unavailable_reason(BACKENDS[backend_name], device)
        if reason:
            return reason
        if backend_name not in listed:
            return self.excluded.get((section, backend_name),
                                     f"not in the {self.name} suite's {section} backends")
        return None

    def config(self):
        """JSON-ready description (stored in the result file)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "excluded":
                value = {f"{s}/{b}": r for (s, b), r in value.items()}
            elif field.name == "sampling_runs":
                value = [dataclasses.asdict(r) for r in value]
            elif isinstance(value, torch.dtype):
                value = str(value).removeprefix("torch.")
            out[field.name] = value
        return out


_GPU_EXCLUDED = {
    ("train", "compile_bf16"): "max-autotune of forward + backward takes many minutes; over the "
                               "GPU suite's budget",
    ("train", "fused_graph"): "graphing the optimizer step needs capturable AdamW and static "
                              "gradients; not implemented",
    ("sampling", "compile_bf16"): "compiling the guided loop (autograd inside for classifier "
                                  "guidance) is outside the GPU suite's budget",
}

_CPU_EXCLUDED = {
    ("sampling", "eager_bf16"): "same kernels as gd_fp16 once both run fp32 on a CPU, except "
                                "SDPA and layout; kept out to stay under a minute",
}

SUITES = {
    "gpu": Suite(
        name="gpu",
        forward_models=("imagenet64_cond", "imagenet128_cond", "imagenet256_cond",
                        "imagenet512_cond", "classifier64", "classifier128", "classifier256",
                        "classifier512"),
        forward_batches=(1, 8, 32),
        forward_backends=ALL,
        forward_timing=dict(warmup=2, target_s=0.4, min_reps=3, max_reps=30),
        train_models=("imagenet64_cond",),
        train_batches=(16,),  # gd_fp16's fp32 softmax copies make 32 a risk for memory
        train_backends=EAGER_AND_FUSED,
        train_timing=dict(warmup=2, target_s=1.0, min_reps=3, max_reps=10),
        sampling_pair=("imagenet256_cond", "classifier256"),
        sampling_batch=4,
        sampling_runs=(
            SamplingRun(25, "ddim", ("gd_fp16", "eager_bf16", "fused_bf16", "fused_graph"),
                        dict(warmup=1, target_s=0.0, min_reps=2, max_reps=2)),
            SamplingRun(250, "ddpm", ("gd_fp16", "fused_bf16", "fused_graph"),
                        dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1)),
        ),
        time_budget_s=480,
        excluded={**_GPU_EXCLUDED,
                  ("sampling", "eager_bf16"): "250 steps cost 10x the 25-step run; only (a), "
                                              "(d), (e) are run at 250 steps"},
    ),
    "cpu": Suite(
        name="cpu",
        forward_models=("tiny_unet", "tiny_classifier", "classifier64"),
        forward_batches=(1, 8),
        forward_backends=EAGER_AND_FUSED,
        forward_timing=dict(warmup=1, target_s=0.3, min_reps=2, max_reps=10),
        train_models=("tiny_unet",),
        train_batches=(8,),
        train_backends=EAGER_AND_FUSED,
        train_timing=dict(warmup=1, target_s=0.5, min_reps=2, max_reps=5),
        sampling_pair=("tiny_unet", "tiny_classifier"),
        sampling_batch=2,
        sampling_runs=(
            SamplingRun(5, "ddim", ("gd_fp16", "fused_bf16"),
                        dict(warmup=1, target_s=0.0, min_reps=2, max_reps=2)),
            SamplingRun(10, "ddpm", ("gd_fp16", "fused_bf16"),
                        dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1)),
        ),
        time_budget_s=50,
        forward_batches_for={"classifier64": (1,)},  # 38 GFLOPs per image: seconds on a CPU
        excluded=_CPU_EXCLUDED,
    ),
    "tiny": Suite(
        name="tiny",
        forward_models=("tiny_unet", "tiny_classifier"),
        forward_batches=(1, 2),
        forward_backends=(*EAGER_AND_FUSED, "fused_graph"),  # CUDA graphs where there is CUDA
        forward_timing=dict(warmup=0, target_s=0.0, min_reps=2, max_reps=2),
        train_models=("tiny_unet",),
        train_batches=(2,),
        train_backends=("gd_fp16", "fused_bf16"),
        train_timing=dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1),
        sampling_pair=("tiny_unet", "tiny_classifier"),
        sampling_batch=1,
        sampling_runs=(
            SamplingRun(2, "ddim", ("gd_fp16", "fused_bf16", "fused_graph"),
                        dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1)),
            SamplingRun(3, "ddpm", ("fused_bf16", "fused_graph"),
                        dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1)),
        ),
        time_budget_s=30,
    ),
}
