"""The benchmark harness on a GPU: the tiny suite with every backend that needs CUDA (bf16/fp16
trunks, CUDA graphs), MFU against the 790 TFLOP/s peak, and one torch.compile max-autotune cell
in its child process."""
import pytest

from fastguide.bench.command import run_command
from conftest import HAS_CUDA
from fastguide.bench.results import validate

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

RUN = ("gd_fp16", "eager_bf16", "fused_bf16", "fused_graph")


@pytest.fixture(scope="module")
def result():
    return run_command(["--suite", "tiny", "--device", "cuda", "--out", "-",
                                        "--quiet"])


def test_every_cuda_backend_runs(result):
    assert validate(result) == []
    assert result["meta"]["peak_flops"] == 790e12 and result["meta"]["cudnn_benchmark"]
    rows = [r for r in result["forward"] if r["backend"] in RUN]
    assert len(rows) == 2 * 2 * len(RUN)
    assert all(r["status"] == "ok" for r in rows), [r.get("reason") for r in rows]
    dtypes = {r["backend"]: r["dtype"] for r in rows}
    assert dtypes == {"gd_fp16": "float16", "eager_bf16": "bfloat16", "fused_bf16": "bfloat16",
                      "fused_graph": "bfloat16"}
    for r in rows:
        assert 0 < r["mfu"] < 1 and r["mfu"] == pytest.approx(r["flops_per_s"] / 790e12)


def test_guided_sampling_on_the_gpu(result):
    by_cell = {(r["guidance"], r["steps"], r["backend"]): r for r in result["sampling"]}
    for key in [("cfg", 2, "gd_fp16"), ("cfg", 2, "fused_bf16"), ("cfg", 2, "fused_graph"),
                ("classifier", 3, "fused_bf16"), ("cfg", 3, "fused_graph")]:
        assert by_cell[key]["status"] == "ok", by_cell[key].get("reason")
        row = by_cell[key]
        assert row["bound_s_per_img"] == pytest.approx(row["flops_per_img"] / 790e12)
        assert row["x_bound"] > 1
    graphed = by_cell[("classifier", 2, "fused_graph")]
    assert graphed["status"] == "skipped" and "CUDA graph" in graphed["reason"]
    assert by_cell[("cfg", 2, "compile_bf16")]["status"] == "skipped"


@pytest.mark.slow
def test_one_compile_cell_in_a_child_process():
    data = run_command([
        "--suite", "tiny", "--device", "cuda", "--sections", "forward", "--models",
        "tiny_classifier", "--batches", "2", "--backends", "compile_bf16", "--time-budget", "300",
        "--out", "-", "--quiet"])
    row, = [r for r in data["forward"] if r["backend"] == "compile_bf16"]
    assert row["status"] == "ok", row.get("reason")
    assert row["compile_s"] > 0 and 0 < row["mfu"] < 1
