"""benchmarks/bench_adagn.py: its shape list (every GroupNormAct call of ADM-64/128/256/512, from
a forward on the meta device) and its bytes-moved model, checked against the formulas; and a
tiny CPU run writing the JSON the dispatch table is filled from."""
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_adagn  # noqa: E402


def test_adm_shapes_are_every_norm_of_the_presets():
    shapes = bench_adagn.adm_shapes()
    assert len(shapes) == len(set(shapes)) >= 40
    # ADM-64's first level, ADM-256's 256x256 level, ADM-512's half-width 512x512 level, and the
    # concatenated skip of ADM-128's decoder (1024 + 768 channels at 8x8).
    for s in [(192, 64, 64), (256, 256, 256), (128, 512, 512), (1792, 8, 8)]:
        assert s in shapes
    assert all(c % 32 == 0 and h == w for c, h, w in shapes)


def test_bytes_model():
    m = bench_adagn.cost_model((32, 256, 64, 64), torch.bfloat16)
    n = 32 * 256 * 64 * 64
    assert m["min_bytes"] == {"fwd": 2 * 2 * n, "bwd": 3 * 2 * n}
    assert abs(m["floor_s"]["h100_3.35TBps"]["fwd"] - 4 * n / 3.35e12) < 1e-12
    assert abs(m["floor_s"]["h200_4.8TBps"]["bwd"] - 6 * n / 4.8e12) < 1e-12


def test_cpu_run_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_adagn, "CPU_SHAPES", [(2, 64, 8, 8)])
    out = tmp_path / "adagn.json"
    bench_adagn.main(["--compile", "none", "--reps", "1", "--layout", "channels_last", "--out", str(out)])
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["shape"] == [2, 64, 8, 8] and row["layout"] == "channels_last"
    assert row["kernel"]["fwd_s"] > 0 and row["eager"]["bwd_s"] > 0
    assert [e["pass"] for e in row["dispatch"]] == ["fwd", "bwd"]
    assert row["dispatch"][0]["key"][:2] == ["adagn", "cpu"]
