"""Small configs under pytest-benchmark, on the CPU (fp32): the tiny UNet's forward on each
eager backend, a classifier-guidance gradient, and one fused DDPM step with CFG.

    pytest benchmarks/test_bench_cpu.py                  # prints pytest-benchmark's table
    pytest benchmarks/test_bench_cpu.py --benchmark-json=out.json

Not part of the test suite (testpaths = tests): these time, they do not check.
"""
import pytest
import torch

from fastguide.bench.backends import BACKENDS, memory_format, prepare
from fastguide.bench.models import build, example_inputs
from fastguide.diffusion import create_gaussian_diffusion
from fastguide.sampling import ClassifierFreeGuidance, classifier_log_prob_grad, p_sample

BATCH = 2


@pytest.mark.parametrize("backend", ["gd_fp16", "eager_bf16", "fused_bf16"])
def test_tiny_unet_forward(benchmark, backend):
    b = BACKENDS[backend]
    model = prepare(build("tiny_unet"), b, torch.float32)
    args, kwargs = example_inputs("tiny_unet", BATCH, memory_format=memory_format(b))
    with torch.no_grad():
        out = benchmark(model, *args, **kwargs)
    assert out.shape == (BATCH, 6, 32, 32)


@pytest.mark.parametrize("backend", ["gd_fp16", "fused_bf16"])
def test_tiny_classifier_guidance_grad(benchmark, backend):
    classifier = prepare(build("tiny_classifier"), BACKENDS[backend], torch.float32)
    (x, t), _ = example_inputs("tiny_classifier", BATCH)
    y = torch.zeros(BATCH, dtype=torch.long)
    grad = benchmark(classifier_log_prob_grad, classifier, x, t, y)
    assert grad.shape == x.shape


@pytest.mark.parametrize("fused", [False, True])
def test_tiny_cfg_ddpm_step(benchmark, fused):
    model = prepare(build("tiny_unet", null_class=True), BACKENDS["fused_bf16"], torch.float32)
    guided = ClassifierFreeGuidance(model, 3.0, null_label=model.null_label)
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing="25")
    (x, _), kwargs = example_inputs("tiny_unet", BATCH)
    t = torch.full((BATCH,), 10, dtype=torch.long)
    with torch.no_grad():
        out = benchmark(p_sample, diffusion, guided, x, t, model_kwargs=kwargs, fused=fused)
    assert out["sample"].shape == x.shape
