"""The benchmark harness on the CPU: `fastguide.bench` runs the tiny suite, and its JSON has
every field, consistent numbers and a reason for every backend it could not run."""
import datetime
import json
import math

import pytest
import torch

from fastguide.bench import flops
from fastguide.bench.backends import BACKENDS, configure, prepare
from fastguide.bench.command import main, run_command
from fastguide.bench.isolate import forward_rows_isolated
from fastguide.bench.models import build
from fastguide.bench.results import REQUIRED, SECTIONS, validate
from fastguide.bench.run import Budget
from fastguide.bench.suites import SUITES
from fastguide.cliutil import CLIError
from fastguide.nn import AttentionBlock, AttentionPool2d, GroupNormAct


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    # A budget that cannot run out, however loaded the machine: every cell must be measured.
    returned = run_command(["--suite", "tiny", "--out", str(path), "--quiet",
                            "--time-budget", "1e9"])
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(returned))  # the file holds what main returned
    return data


def ok_rows(data, section):
    return [r for r in data[section] if r["status"] == "ok"]


def test_result_file_is_valid_and_has_every_field(result):
    assert validate(result) == []
    for key in REQUIRED["top"]:
        assert key in result
    for key in REQUIRED["meta"]:
        assert key in result["meta"]
    assert result["suite"] == "tiny" and result["benchmark"] == "models"
    assert result["meta"]["torch"] == torch.__version__
    assert result["meta"]["device"].startswith("cpu")
    assert result["meta"]["peak_flops"] is None
    assert len(result["meta"]["commit"].removesuffix("+dirty")) in (40, len("unknown"))
    datetime.datetime.fromisoformat(result["meta"]["date"])
    assert set(result["backends"]) == set(BACKENDS)
    assert result["config"]["forward_models"] == ["tiny_unet", "tiny_classifier"]


def test_every_cell_of_the_grid_is_a_row(result):
    suite = SUITES["tiny"]
    cells = {(r["model"], r["batch"], r["backend"]) for r in result["forward"]}
    assert cells == {(m, b, name) for m in suite.forward_models for b in suite.forward_batches
                     for name in BACKENDS}
    assert len(result["forward"]) == len(cells)
    assert len(result["train"]) == len(suite.train_batches) * len(BACKENDS)
    runs = len(suite.sampling_runs) * 2 * len(BACKENDS)  # x (cfg, classifier)
    assert len(result["sampling"]) == runs


def test_unavailable_backends_are_skipped_with_their_reason(result):
    by_backend = {}
    for section in SECTIONS:
        for row in result[section]:
            by_backend.setdefault(row["backend"], set()).add((row["status"], row.get("reason")))
    assert by_backend["fused_graph"] == {("skipped", "CUDA graphs need a CUDA device")}
    (status, reason), = by_backend["compile_bf16"]
    assert status == "skipped" and "max-autotune" in reason
    # eager_bf16 runs in the forward grid, and is not in the tiny suite's training backends.
    assert {r["status"] for r in result["forward"] if r["backend"] == "eager_bf16"} == {"ok"}
    train = {r["backend"]: r for r in result["train"]}
    assert train["eager_bf16"]["reason"] == "not in the tiny suite's train backends"


def test_measured_rows_are_consistent(result):
    ran = {(r["model"], r["backend"]) for r in ok_rows(result, "forward")}
    assert ran == {(m, b) for m in ("tiny_unet", "tiny_classifier")
                   for b in ("gd_fp16", "eager_bf16", "fused_bf16")}
    for row in ok_rows(result, "forward"):
        counted = flops.forward_flops(row["model"])
        assert row["flops_per_img"] == counted["total"] and row["params"] == counted["params"]
        assert math.isclose(row["img_per_s"], row["batch"] / row["time_s"])
        assert math.isclose(row["flops_per_s"], row["flops_per_img"] * row["img_per_s"])
        assert row["mfu"] is None and row["dtype"] == "float32"  # CPU: fp32, no peak
        assert row["time_min_s"] <= row["time_s"] and row["reps"] == 2
        assert row["layout"] == ("contiguous" if row["backend"] == "gd_fp16" else "channels_last")
    for row in ok_rows(result, "train"):
        assert row["flops_per_img"] == flops.train_flops("tiny_unet")["total"]


def test_sampling_rows_count_flops_per_image_over_the_whole_loop(result):
    rows = ok_rows(result, "sampling")
    assert {(r["guidance"], r["steps"], r["backend"]) for r in rows} == {
        ("cfg", 2, "gd_fp16"), ("cfg", 2, "fused_bf16"), ("classifier", 2, "gd_fp16"),
        ("classifier", 2, "fused_bf16"), ("cfg", 3, "fused_bf16"), ("classifier", 3, "fused_bf16")}
    fwd = flops.forward_flops("tiny_unet")["total"]
    grad = flops.guidance_flops("tiny_classifier")["total"]
    for row in rows:
        per_step = 2 * fwd if row["guidance"] == "cfg" else fwd + grad
        assert row["flops_per_img"] == row["steps"] * per_step
        assert row["classifier"] == ("tiny_classifier" if row["guidance"] == "classifier" else None)
        assert math.isclose(row["s_per_img"], row["time_s"] / row["batch"])
        assert row["bound_s_per_img"] is None and row["x_bound"] is None


def test_validate_reports_missing_fields_and_bad_values(result):
    broken = json.loads(json.dumps(result))
    del broken["meta"]["commit"]
    row = ok_rows(broken, "forward")[0]
    del row["img_per_s"]
    row["time_s"] = float("nan")
    broken["train"][0] = {**broken["train"][0], "status": "skipped", "reason": ""}
    problems = validate(broken)
    assert "meta: missing 'commit'" in problems
    assert any("missing 'img_per_s'" in p for p in problems)
    assert any("time_s = nan" in p for p in problems)
    assert any(p.startswith("train[0]: skipped without a reason") for p in problems)


def test_backend_and_model_options_and_merge(tmp_path):
    out = str(tmp_path / "r.json")
    options = ["--suite", "tiny", "--sections", "forward", "--models", "tiny_classifier",
               "--batches", "3", "--out", out, "--quiet", "--time-budget", "1e9"]
    data = run_command(options + ["--backends", "fused_bf16"])
    with pytest.raises(CLIError, match="already exists"):  # never replaced without a flag
        run_command(options + ["--backends", "fused_bf16"])
    assert data["train"] == [] and data["sampling"] == []
    rows = {r["backend"]: r for r in data["forward"]}
    assert set(rows) == set(BACKENDS) and rows["fused_bf16"]["batch"] == 3
    assert rows["fused_bf16"]["status"] == "ok"
    assert rows["gd_fp16"]["reason"] == "not selected (--backends)"
    # A second call measures gd_fp16 and merges: the first call's fused_bf16 row is kept.
    merged = run_command(options + ["--backends", "gd_fp16", "--merge"])
    rows = {r["backend"]: r for r in merged["forward"]}
    assert rows["fused_bf16"] == {r["backend"]: r for r in data["forward"]}["fused_bf16"]
    assert rows["gd_fp16"]["status"] == "ok" and len(merged["forward"]) == len(BACKENDS)
    assert merged["merged_from"][0]["meta"] == data["meta"]
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(merged))
    assert validate(merged) == []
    with pytest.raises(SystemExit):
        run_command(["--backends", "nonsense"])


def test_main_returns_an_exit_status_and_prints_the_table(capsys):
    # main(argv) is what `python -m fastguide.bench` and a `fastguide bench` command call.
    options = ["--suite", "tiny", "--sections", "train", "--backends", "fused_bf16", "--out", "-",
               "--time-budget", "1e9"]
    assert main(options + ["--quiet"]) == 0
    capsys.readouterr()
    assert main(options) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "tiny_unet" in printed and "img/s" in printed


def test_prepare_sets_every_switch():
    model = prepare(build("tiny_classifier"), BACKENDS["eager_bf16"])
    norms = [m.backend for m in model.modules() if isinstance(m, GroupNormAct)]
    attention = [m.backend for m in model.modules()
                 if isinstance(m, (AttentionBlock, AttentionPool2d))]
    # encoder attention at 16x16, the middle block's, and the pool head
    assert set(norms) == {"reference"} and set(attention) == {"sdpa"} and len(attention) == 3
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    prepare(model, BACKENDS["gd_fp16"])
    assert model.dtype == torch.float16
    assert model.input_blocks[0][0].weight.is_contiguous()
    configure(model, "fused", "fused")
    assert {m.backend for m in model.modules() if isinstance(m, GroupNormAct)} == {"fused"}


class FakeClock:
    """An injected clock: the budget's decisions depend on it alone, not on the machine."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_budget_reason():
    clock = FakeClock()
    budget = Budget(100, clock=clock)
    assert budget.reason() is None and budget.remaining() == 100
    assert budget.reason(needed_s=200).startswith("time budget: ~200 s needed, 100 s of 100 s")
    clock.now += 60
    assert budget.remaining() == 40 and budget.reason(needed_s=30) is None
    assert budget.reason(needed_s=50).startswith("time budget: ~50 s needed, 40 s of 100 s left")
    clock.now += 100
    assert budget.reason().startswith("time budget: 0 s of 100 s left")


def test_a_spent_budget_skips_every_remaining_cell_with_its_reason(monkeypatch):
    # The run's clock is past the budget before the first cell: every cell is skipped.
    from fastguide.bench import run as run_module
    clock = FakeClock()

    def spent_budget(seconds):
        budget = Budget(seconds, clock=clock)
        clock.now += seconds + 1
        return budget
    monkeypatch.setattr(run_module, "Budget", spent_budget)
    data = run_command(["--suite", "tiny", "--sections", "forward,train", "--out", "-",
                        "--quiet", "--time-budget", "30"])
    rows = data["forward"] + data["train"]
    assert rows and all(r["status"] == "skipped" for r in rows)
    assert {r["reason"] for r in rows if r["backend"] == "fused_bf16"} == {
        "time budget: 0 s of 30 s left"}


def test_isolated_cells_report_rows_or_the_time_budget():
    rows = forward_rows_isolated("tiny_classifier", [1], BACKENDS["fused_bf16"],
                                 torch.device("cpu"), torch.float32,
                                 dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1), 3600)
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["reps"] == 1
    # A 512x512 UNet at batch 32 cannot build and run on a CPU in 1 s: both cells are skipped.
    rows = forward_rows_isolated("imagenet512_cond", [32, 8], BACKENDS["fused_bf16"],
                                 torch.device("cpu"), torch.float32,
                                 dict(warmup=0, target_s=0.0, min_reps=1, max_reps=1), 1)
    assert [(r["batch"], r["status"]) for r in rows] == [(32, "skipped"), (8, "skipped")]
    assert rows[0]["reason"].startswith("time budget")
