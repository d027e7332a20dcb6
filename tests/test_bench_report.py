"""The README's performance tables are rendered from result JSON: the renderer on a small
synthetic GPU result, and the README section replacement."""
import importlib.util
import json
import pathlib

import pytest

from fastguide.bench.backends import BACKENDS
from fastguide.bench.report import BEGIN, END, render, replace_section
from fastguide.bench.results import validate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def forward_row(backend, img_per_s, batch=8, status="ok"):
    if status != "ok":
        return {"model": "imagenet256_cond", "batch": batch, "backend": backend,
                "status": status, "reason": "CUDA out of memory"}
    flops = 2239.7e9
    return {"model": "imagenet256_cond", "batch": batch, "backend": backend, "status": "ok",
            "dtype": "bfloat16", "layout": "channels_last", "params": 553838086,
            "flops_per_img": flops, "time_s": batch / img_per_s, "time_min_s": batch / img_per_s,
            "reps": 5, "img_per_s": img_per_s, "flops_per_s": flops * img_per_s,
            "mfu": flops * img_per_s / 790e12}


def sampling_row(backend, s_per_img):
    flops = 25 * 2 * 2239.7e9
    bound = flops / 790e12
    return {"model": "imagenet256_cond", "classifier": None, "guidance": "cfg",
            "sampler": "ddim", "steps": 25, "batch": 4, "backend": backend, "status": "ok",
            "dtype": "bfloat16", "flops_per_img": flops, "time_s": 4 * s_per_img, "reps": 2,
            "s_per_img": s_per_img, "flops_per_s": flops / s_per_img, "bound_s_per_img": bound,
            "x_bound": s_per_img / bound, "mfu": bound / s_per_img}


@pytest.fixture
def gpu_result():
    skip = {"model": "imagenet64_cond", "batch": 32, "status": "skipped",
            "reason": "not in the gpu suite's train backends"}
    return {
        "benchmark": "models", "schema_version": 1, "suite": "gpu",
        "meta": {"date": "2031-01-02T03:04:05+00:00", "commit": "0123456789abcdef" * 2 + "01234567",
                 "torch": "2.11.0+cu130", "device": "NVIDIA H100 80GB HBM3", "python": "3.12.3",
                 "threads": 16, "fastguide_build": {}, "peak_flops": 790e12},
        "config": {},
        "backends": {name: b.describe() for name, b in BACKENDS.items()},
        "forward": [forward_row("gd_fp16", 100.0), forward_row("eager_bf16", 150.0),
                    forward_row("compile_bf16", 0, status="error"),
                    forward_row("fused_bf16", 180.0), forward_row("fused_graph", 200.0)],
        "train": [{**skip, "backend": name} for name in BACKENDS],
        "sampling": [sampling_row("gd_fp16", 1.0), sampling_row("fused_graph", 0.25)],
    }


def test_synthetic_result_is_valid(gpu_result):
    assert validate(gpu_result) == []


def test_forward_table(gpu_result):
    text = render(gpu_result)
    assert text.startswith("#### NVIDIA H100 80GB HBM3 (suite `gpu`, torch 2.11.0+cu130, "
                           "commit 0123456789ab, 2031-01-02)\n")
    assert "MFU against 790 TFLOP/s." in text
    header = ("| model | batch | GFLOPs/img | (a) guided-diffusion eager, fp16 | "
              "(b) eager + SDPA + channels_last, bf16 | (d) fastguide fused, bf16 | "
              "(e) fastguide fused + CUDA graph, bf16 | fastguide vs (a) |")
    assert header in text
    # 100 img/s x 2239.7 GFLOPs = 224 TFLOP/s = 28% of 790; the best fastguide backend is 2x (a).
    assert ("| imagenet256_cond | 8 | 2240 | 100 (28%) | 150 (43%) | 180 (51%) | 200 (57%) "
            "| 2.00x |") in text
    assert "(c) torch.compile max-autotune of (b): not run (CUDA out of memory)" in text


def test_sampling_table_and_empty_sections(gpu_result):
    text = render(gpu_result)
    # 25 steps x 2 x 2239.7 GFLOPs = 112 TFLOPs per image: 0.142 s at 790 TFLOP/s.
    assert ("| imagenet256_cond | cfg | ddim | 25 | 4 | 112 | 0.142 | 1.00 (7.1x) | "
            "0.25 (1.8x) | 4.00x |") in text
    assert "Training step" not in text  # nothing ran: no table


def test_replace_section_and_the_readme_script(gpu_result, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    result = tmp_path / "models_h100.json"
    result.write_text(json.dumps(gpu_result))
    spec = importlib.util.spec_from_file_location("readme_table",
                                                  ROOT / "benchmarks" / "README_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(result), "--readme", str(readme)])
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith(f"# title\n\n{BEGIN}\n#### NVIDIA H100")
    assert text.endswith(f"\n{END}\n\nafter\n")
    assert text.count("| imagenet256_cond | 8 |") == 1
    with pytest.raises(ValueError, match="markers are missing"):
        replace_section("# no markers\n", "table")
