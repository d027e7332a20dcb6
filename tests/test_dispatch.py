"""The backend switch and the dispatch table (fastguide.dispatch): "fused" takes the kernel only
where committed GPU measurements say so and the known-good alternative elsewhere, by a table
lookup (deterministic); "kernel" and "reference" force their paths; the report names each
layer's path. A CUDA device is simulated by the device key where the test needs one."""
import json

import pytest
import torch

import fastguide
from fastguide import dispatch
from fastguide.nn import GroupNormAct, UNet
from fastguide.nn.attention import qkv_attention, qkv_attention_sdpa
from fastguide.ops import group_norm_act, group_norm_act_eager, group_norm_act_reference
from test_adagn import ULP, rel_err, to_channels_last


@pytest.fixture
def on_sm90(monkeypatch):
    """CPU tensors dispatched as if they lived on an sm_90 device, with an empty table."""
    monkeypatch.setattr(dispatch, "device_key", lambda device: "sm_90")
    monkeypatch.setattr(dispatch, "TABLE", {})


def tiny_unet(**kw):
    torch.manual_seed(0)
    cfg = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
               attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2, num_classes=5,
               use_scale_shift_norm=True, resblock_updown=True)
    cfg.update(kw)
    return UNet(**cfg).eval()


def test_cpu_takes_the_kernels():
    x = torch.randn(2, 64, 4, 4)
    key = dispatch.adagn_key(x)
    assert key == ("adagn", "cpu", "float32", "contiguous", "n<=8-hw<=64-c<=256")
    assert dispatch.choose(key) == "kernel"
    assert dispatch.adagn_key(to_channels_last(x))[3] == "channels_last"


def test_unmeasured_gpu_keys_take_the_alternative(on_sm90, monkeypatch):
    x = torch.randn(2, 64, 4, 4)
    key = dispatch.adagn_key(x)
    assert key[1] == "sm_90" and dispatch.choose(key) == "eager"
    qkv = torch.randn(2, 3 * 64, 16)
    assert dispatch.choose(dispatch.attention_key(qkv, 2)) == "sdpa"
    monkeypatch.setattr(dispatch, "TABLE", {key: "kernel"})
    assert dispatch.choose(key) == "kernel"
    assert dispatch.choose(dispatch.adagn_key(torch.randn(64, 64, 4, 4))) == "eager"  # another class


def test_fused_layer_follows_the_table(on_sm90, monkeypatch):
    layer = GroupNormAct(64, 32)
    x, s, sh = torch.randn(2, 64, 5, 5), torch.randn(2, 64), torch.randn(2, 64)
    eager = group_norm_act_eager(x, 32, layer.weight, layer.bias, s, sh)
    assert torch.equal(layer(x, s, sh), eager)  # empty table: the eager chain, exactly
    monkeypatch.setattr(dispatch, "TABLE", {dispatch.adagn_key(x): "kernel"})
    assert torch.equal(layer(x, s, sh), group_norm_act(x, 32, layer.weight, layer.bias, s, sh))


def test_fused_attention_follows_the_table(on_sm90):
    qkv = torch.randn(2, 3 * 64, 16)
    assert torch.equal(qkv_attention(qkv, 2, "legacy", "fused"), qkv_attention_sdpa(qkv, 2, "legacy"))


def test_forced_backends():
    x = torch.randn(2, 32, 4, 4)
    layer = GroupNormAct(32, 8)
    for backend, fn in (("kernel", group_norm_act), ("eager", group_norm_act_eager),
                        ("reference", group_norm_act_reference)):
        layer.backend = backend
        assert torch.equal(layer(x), fn(x, 8, layer.weight, layer.bias))
    with pytest.raises(ValueError, match="backend must be one of"):
        GroupNormAct(32, 8, backend="sdpa")
    model = tiny_unet()
    for b in dispatch.MODEL_BACKENDS:
        assert model.set_backend(b).backend == b
    with pytest.raises(ValueError, match="backend must be one of"):
        model.set_backend("eager")  # a norm-only alternative is not a model backend


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_chain_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    x = to_channels_last(torch.randn(2, 64, 6, 6, generator=g)).to(dtype)
    w, b = 1 + 0.2 * torch.randn(64, generator=g), 0.1 * torch.randn(64, generator=g)
    s, sh = 0.3 * torch.randn(2, 64, generator=g), 0.3 * torch.randn(2, 64, generator=g)
    y = group_norm_act_eager(x, 32, w, b, s, sh)
    r = group_norm_act_reference(x, 32, w, b, s, sh)
    assert y.dtype == dtype
    # The chain rounds to x's dtype after the norm and after the scale-shift: a few ulps.
    assert rel_err(y, r) <= (1e-5 if dtype == torch.float32 else 4 * ULP[dtype])


def test_report_names_every_layer_and_path(on_sm90):
    model = tiny_unet()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 4])
    rows = fastguide.dispatch_report(model, x, t, y=y)
    norms = [n for n, m in model.named_modules() if isinstance(m, GroupNormAct)]
    assert [r["layer"] for r in rows if r["op"] == "adagn"] == norms
    assert {r["path"] for r in rows} == {"eager", "sdpa"}
    attn = [r for r in rows if r["op"] == "attention"]
    assert attn and all(r["key"][0] == "attention" and r["layer"].endswith(".1") for r in attn)
    assert rows == fastguide.dispatch_report(model, x, t, y=y)  # deterministic
    static = fastguide.dispatch_report(model.set_backend("kernel"))
    assert {r["path"] for r in static} == {"kernel"} and len(static) == len(norms) + len(attn)


def test_report_on_cpu_without_inputs():
    rows = fastguide.dispatch_report(tiny_unet())
    assert rows and {r["path"] for r in rows} == {"kernel"}


def test_table_from_measurements():
    key = ["adagn", "sm_90", "bfloat16", "channels_last", "n<=32-hw<=4096-c<=256"]
    other = ["adagn", "sm_90", "bfloat16", "channels_last", "n<=1-hw<=4096-c<=256"]
    rows = [{"dispatch": [{"key": key, "kernel_s": 1.0, "alternative_s": 3.0},
                          {"key": key, "kernel_s": 1.0, "alternative_s": 1.2},
                          {"key": other, "kernel_s": 1.0, "alternative_s": 1.5},
                          {"key": other, "kernel_s": 1.0, "alternative_s": 0.9},   # loses once: out
                          {"key": ["adagn", "cpu"] + key[2:], "kernel_s": 1.0, "alternative_s": 9.0}]}]
    assert dispatch.table_from_rows(rows) == {tuple(key): "kernel"}
    assert dispatch.table_from_rows(rows, margin=1.3) == {}
    space = {}
    exec(dispatch._table_source({tuple(key): "kernel"}), space)  # the source the file gets
    assert space["TABLE"] == {tuple(key): "kernel"}


def test_fill_command(tmp_path, capsys):
    key = ["attention", "sm_90", "bfloat16", "channels_last", "n<=8-l<=256-d64"]
    f = tmp_path / "attention_h200.json"
    f.write_text(json.dumps({"rows": [{"dispatch": [{"key": key, "kernel_s": 1, "alternative_s": 2}]}]}))
    assert dispatch.main(["fill", str(f)]) == 0
    assert repr(tuple(key)) in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        dispatch.main(["fill", str(tmp_path / "missing.json")])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        dispatch.main(["fill", str(f), "--margin", "0.5"])


def test_committed_table_is_well_formed():
    """Only GPU keys, only "kernel" values (absent keys take the alternative)."""
    for key, value in dispatch.TABLE.items():
        assert len(key) == 5 and key[0] in dispatch.ALTERNATIVE and key[1].startswith("sm_")
        assert value == "kernel"
    assert isinstance(fastguide.build_info()["dispatch_kernel_cells"], dict)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_paths_and_the_kernel_backend(reference_dir):
    """On a GPU, "fused" takes what the committed table says (the alternative where it has no
    entry for this device) and "kernel" always the kernels; both give the reference vectors."""
    import numpy as np
    from conftest import load_reference_model
    d = np.load(reference_dir / "unet_cond_ss.npz")
    model = load_reference_model(reference_dir, "unet_cond_ss.pt", str(d["config"])).cuda()
    args = (torch.from_numpy(d["x"]).cuda(), torch.from_numpy(d["timesteps"]).cuda())
    y = torch.from_numpy(d["y"]).cuda()
    dev = dispatch.device_key(args[0].device)
    for backend in ("fused", "kernel"):
        rows = fastguide.dispatch_report(model.set_backend(backend), *args, y=y)
        for r in rows:
            want = "kernel" if backend == "kernel" else dispatch.TABLE.get(tuple(r["key"]), dispatch.ALTERNATIVE[r["op"]])
            assert r["key"][1] == dev and r["path"] == want
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                out = model(*args, y=y)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        assert rel_err(out.cpu(), torch.from_numpy(d["out"])) <= 1e-4
