"""The CUDA AdaGN kernels against the reference on the same GPU, on both paths: the single pass
(clusters on sm_90) where it applies, and the multi-pass kernels (forced with _adagn_set_path).
Skipped without a GPU."""
import pytest
import torch

from conftest import HAS_CUDA, cuda_kernels_built
from fastguide.ops import group_norm_act, group_norm_act_reference
from test_adagn import ULP, make_inputs, rel_err

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
]


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if HAS_CUDA and not cuda_kernels_built():
        pytest.fail("a GPU is present but fastguide was built without CUDA kernels")


@pytest.fixture(params=["auto", "multipass"])
def path(request):
    previous = torch.ops.fastguide._adagn_set_path(0 if request.param == "auto" else 1)
    yield request.param
    torch.ops.fastguide._adagn_set_path(previous)


def cuda_inputs(*args, **kw):
    return [None if t is None else t.cuda() for t in make_inputs(*args, **kw)]


# Shapes chosen to hit every path: 16-byte packs and single elements (C or S not a multiple of
# 8), several splits per (n, g) (N * G small), clusters at batch 1, many column tiles (C / 8 >
# 256), groups wider than a tile, packs straddling groups (Cg = 6), 1-element groups, one group,
# and ADM's own sizes.
SHAPES = [((2, 64, 8, 8), 32), ((1, 32, 64, 64), 32), ((3, 20, 5, 7), 4), ((2, 4104, 2, 2), 8),
          ((8, 256, 16, 16), 32), ((2, 192, 9, 9), 32), ((1, 3072, 4, 4), 32), ((4, 8, 1, 1), 8),
          ((2, 32, 33), 8), ((1, 16, 3, 4, 5), 4), ((1, 256, 32, 32), 32), ((2, 64, 8, 8), 1),
          ((1, 128, 96, 96), 32), ((2, 1024, 8, 8), 32)]


@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_cuda(path, shape, groups, layout, dtype):
    x, w, b, s, sh = cuda_inputs(shape, groups, dtype, layout)
    y = group_norm_act(x, groups, w, b, s, sh)
    ref = group_norm_act_reference(x, groups, w, b, s, sh)
    assert y.stride() == x.stride() and y.dtype == dtype
    if dtype == torch.float32:
        assert rel_err(y, ref) <= 1e-5
    else:
        tol = ULP[dtype] * ref.float().abs() + 1e-5 * ref.float().abs().max()
        assert ((y.float() - ref.float()).abs() <= tol).all()


@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["silu", None])
def test_backward_cuda(path, shape, groups, layout, dtype, act):
    inputs = cuda_inputs(shape, groups, dtype, layout)
    grad = torch.randn(shape, device="cuda").to(dtype)
    fused = [t.detach().clone().requires_grad_() for t in inputs]
    group_norm_act(fused[0], groups, *fused[1:], act=act).backward(grad)
    ref = [t.detach().float().requires_grad_() for t in inputs]
    group_norm_act_reference(ref[0], groups, *ref[1:], act=act).backward(grad.float())
    dx_tol = 1e-4 if dtype == torch.float32 else 4 * ULP[dtype]
    assert rel_err(fused[0].grad, ref[0].grad) <= dx_tol
    for a, r in zip(fused[1:], ref[1:]):
        assert rel_err(a.grad, r.grad) <= 1e-4


def test_paths_agree_and_repeat_bit_for_bit():
    x, w, b, s, sh = cuda_inputs((2, 256, 32, 32), 32, torch.bfloat16, "channels_last")
    grad = torch.randn(x.shape, device="cuda").to(x.dtype)
    out = {}
    for p in (0, 1):
        previous = torch.ops.fastguide._adagn_set_path(p)
        try:
            runs = []
            for _ in range(2):
                leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, s, sh)]
                y = group_norm_act(leaves[0], 32, *leaves[1:])
                y.backward(grad)
                runs.append([y] + [t.grad for t in leaves])
            for a, c in zip(*runs):
                assert torch.equal(a, c)  # deterministic: no atomics, fixed reduction orders
            out[p] = runs[0]
        finally:
            torch.ops.fastguide._adagn_set_path(previous)
    for a, c in zip(out[0], out[1]):  # the two paths: the same function, rounding apart
        assert rel_err(a, c) <= (2 * ULP[torch.bfloat16] if a.dtype == torch.bfloat16 else 1e-4)


def test_cuda_matches_cpu_kernel():
    x, w, b, s, sh = make_inputs((4, 128, 12, 12), 32, layout="channels_last")
    y_cpu = group_norm_act(x, 32, w, b, s, sh)
    y_gpu = group_norm_act(x.cuda(), 32, *[t.cuda() for t in (w, b, s, sh)])
    assert rel_err(y_gpu.cpu(), y_cpu) <= 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_misaligned_storage_takes_the_scalar_path(path, layout):
    base = torch.randn(2 * 64 * 8 * 8 + 1, device="cuda")
    x = base[1:].view(2, 8, 8, 64).permute(0, 3, 1, 2) if layout == "channels_last" else base[1:].view(2, 64, 8, 8)
    assert x.data_ptr() % 16
    assert rel_err(group_norm_act(x, 32), group_norm_act_reference(x, 32)) <= 1e-5


@pytest.mark.parametrize("shape", [(3, 96, 7, 7), (1, 256, 32, 32), (2, 64, 40, 40)])
def test_every_output_element_written(path, shape):
    x = torch.randn(shape, device="cuda").to(memory_format=torch.channels_last)
    for _ in range(3):  # poison the allocator's recycled blocks
        torch.full((4 * x.numel(),), float("nan"), device="cuda")
        x_ = x.detach().requires_grad_()
        y = group_norm_act(x_, 32)
        assert torch.isfinite(y).all()
        torch.full((4 * x.numel(),), float("nan"), device="cuda")
        y.backward(torch.randn_like(y))
        assert torch.isfinite(x_.grad).all()


def test_nan_and_empty_on_cuda(path):
    x = torch.randn(2, 16, 4, 4, device="cuda")
    x[1, 5, 2, 2] = float("nan")
    y = group_norm_act(x, 4)
    assert torch.isnan(y[1, 4:8]).all() and torch.isfinite(y[0]).all()
    assert group_norm_act(torch.randn(0, 16, 4, 4, device="cuda"), 4).shape == (0, 16, 4, 4)


def test_float64_on_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="float64 is supported on the CPU only"):
        group_norm_act(torch.randn(2, 8, 4, 4, device="cuda", dtype=torch.float64), 2)


def test_mixed_devices_error():
    with pytest.raises(ValueError, match="weight is on cpu but x is on cuda"):
        group_norm_act(torch.randn(2, 8, 4, 4, device="cuda"), 2, torch.randn(8))


def test_direct_backward_call_checks_every_device():
    """A tensor on another device would be read through a foreign pointer: each is checked."""
    x = torch.randn(2, 8, 4, 4, device="cuda")
    y, mean, rstd = torch.ops.fastguide.group_norm_act(x, 2, None, None, None, None, True, 1e-5)
    g = torch.randn_like(y)
    op = torch.ops.fastguide.group_norm_act_backward
    with pytest.raises(RuntimeError, match="mean is on cpu but x is on cuda"):
        op(g, x, mean.cpu(), rstd, 2, None, None, None, None, True)
    with pytest.raises(RuntimeError, match="rstd is on cpu but x is on cuda"):
        op(g, x, mean, rstd.cpu(), 2, None, None, None, None, True)
    with pytest.raises(RuntimeError, match="grad_y is on cpu but x is on cuda"):
        op(g.cpu(), x, mean, rstd, 2, None, None, None, None, True)
    with pytest.raises(RuntimeError, match="x is on cpu"):
        op(g, x.cpu(), mean, rstd, 2, None, None, None, None, True)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_gpu_tensors_are_refused():
    x = torch.randn(2, 8, 4, 4, device="cuda:0")
    with pytest.raises(RuntimeError, match="is on cuda:1 but x is on cuda:0"):
        torch.ops.fastguide.group_norm_act(x, 2, torch.ones(8, device="cuda:1"), None, None, None, True, 1e-5)
    y, mean, rstd = torch.ops.fastguide.group_norm_act(x, 2, None, None, None, None, True, 1e-5)
    with pytest.raises(RuntimeError, match="mean is on cuda:1 but x is on cuda:0"):
        torch.ops.fastguide.group_norm_act_backward(torch.randn_like(y), x, mean.to("cuda:1"), rstd, 2,
                                                    None, None, None, None, True)
    x1 = torch.randn(2, 8, 4, 4, device="cuda:1")  # the op runs on the tensors' own device
    assert rel_err(group_norm_act(x1, 2).cpu(), group_norm_act_reference(x1, 2).cpu()) <= 1e-5


def test_opcheck_and_compile_cuda():
    x, w, b, s, sh = cuda_inputs((2, 64, 8, 8), 32, torch.bfloat16, "channels_last")
    torch.library.opcheck(torch.ops.fastguide.group_norm_act.default, (x, 32, w, b, s, sh, True, 1e-5))
    f = torch.compile(lambda x: group_norm_act(x, 32, w, b, s, sh), fullgraph=True)
    assert rel_err(f(x), group_norm_act(x, 32, w, b, s, sh)) == 0.0
