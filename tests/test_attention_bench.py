"""benchmarks/bench_attention.py: a tiny CPU run writing the JSON rows, and the dispatch entries
the table is filled from (each layout's kernel against the fastest SDPA backend measured)."""
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_attention  # noqa: E402


def test_dispatch_entries_compare_with_the_fastest_sdpa_backend():
    qkv = torch.randn(2, 64, 3 * 2 * 64).transpose(1, 2)  # tokens-major, 2 heads of 64
    nchw = qkv.contiguous()
    row = {"kernel": {"fwd_s": 1.0, "bwd_s": 2.0}, "kernel_nchw": {"fwd_s": 1.5, "bwd_s": 2.5},
           "sdpa_flash": {"fwd_s": 0.9, "bwd_s": 4.0}, "sdpa_math": {"fwd_s": 3.0, "bwd_s": 1.9},
           "sdpa_cudnn": {"skipped": "not supported"}, "einsum": {"fwd_s": 0.1, "bwd_s": 0.1}}
    cands = dict.fromkeys(row)
    bench_attention.add_dispatch_entries(row, cands, qkv, nchw, 2)
    entries = {(e["key"][3], e["pass"]): e for e in row["dispatch"]}
    assert set(entries) == {(layout, p) for layout in ("channels_last", "contiguous") for p in ("fwd", "bwd")}
    assert entries["channels_last", "fwd"]["kernel_s"] == 1.0
    assert entries["contiguous", "bwd"]["kernel_s"] == 2.5
    # the alternative is the fastest SDPA backend of each pass; einsum is not an alternative
    assert entries["channels_last", "fwd"]["alternative_s"] == 0.9
    assert entries["channels_last", "bwd"]["alternative_s"] == 1.9
    assert entries["channels_last", "fwd"]["key"][0] == "attention"


def test_no_sdpa_measurement_no_entries():
    qkv = torch.randn(1, 3 * 64, 16)
    row = {"kernel": {"fwd_s": 1.0, "bwd_s": 1.0}, "sdpa_math": {"skipped": "x"}}
    bench_attention.add_dispatch_entries(row, dict.fromkeys(row), qkv, qkv, 1)
    assert "dispatch" not in row


def test_cpu_run_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_attention, "CPU_SHAPES", [(16, 2, (1,))])
    out = tmp_path / "attention.json"
    bench_attention.main(["--reps", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert (row["batch"], row["L"], row["heads"]) == (1, 16, 2)
    assert row["kernel"]["fwd_s"] > 0 and row["sdpa_math"]["bwd_s"] > 0
    assert {e["pass"] for e in row["dispatch"]} == {"fwd", "bwd"}
    assert row["dispatch"][0]["key"][:2] == ["attention", "cpu"]
    assert data["meta"]["torch"] == torch.__version__
