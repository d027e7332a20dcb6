"""The CUDA AdaGN kernels against the reference on the same GPU. Skipped without a GPU."""
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


def cuda_inputs(*args, **kw):
    return [None if t is None else t.cuda() for t in make_inputs(*args, **kw)]


# Shapes chosen to hit every path: 16-byte packs and single elements (C or S not a multiple
# of 8), several spatial splits per (n, g) (N * G small), many column tiles (C / 8 > 256),
# 1-element groups, and ADM's own sizes.
SHAPES = [((2, 64, 8, 8), 32), ((1, 32, 64, 64), 32), ((3, 20, 5, 7), 4), ((2, 4104, 2, 2), 8),
          ((8, 256, 16, 16), 32), ((2, 192, 9, 9), 32), ((1, 3072, 4, 4), 32), ((4, 8, 1, 1), 8),
          ((2, 32, 33), 8), ((1, 16, 3, 4, 5), 4)]


@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_cuda(shape, groups, layout, dtype):
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
def test_backward_cuda(shape, groups, layout, dtype, act):
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


def test_cuda_matches_cpu_kernel():
    x, w, b, s, sh = make_inputs((4, 128, 12, 12), 32, layout="channels_last")
    y_cpu = group_norm_act(x, 32, w, b, s, sh)
    y_gpu = group_norm_act(*[t.cuda() for t in (x,)], 32, *[t.cuda() for t in (w, b, s, sh)])
    assert rel_err(y_gpu.cpu(), y_cpu) <= 1e-5


def test_misaligned_storage_takes_the_scalar_path():
    base = torch.randn(2 * 64 * 8 * 8 + 1, device="cuda")
    x = base[1:].view(2, 64, 8, 8)  # 4-byte offset: no 16-byte packs possible
    assert rel_err(group_norm_act(x, 32), group_norm_act_reference(x, 32)) <= 1e-5


def test_every_output_element_written():
    x = torch.randn(3, 96, 7, 7, device="cuda").to(memory_format=torch.channels_last)
    for _ in range(3):  # poison the allocator's recycled blocks
        torch.full((3 * 96 * 7 * 7,), float("nan"), device="cuda")
        assert torch.isfinite(group_norm_act(x, 32)).all()


def test_nan_and_empty_on_cuda():
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


def test_opcheck_and_compile_cuda():
    x, w, b, s, sh = cuda_inputs((2, 64, 8, 8), 32, torch.bfloat16, "channels_last")
    torch.library.opcheck(torch.ops.fastguide.group_norm_act.default, (x, 32, w, b, s, sh, True, 1e-5))
    f = torch.compile(lambda x: group_norm_act(x, 32, w, b, s, sh), fullgraph=True)
    assert rel_err(f(x), group_norm_act(x, 32, w, b, s, sh)) == 0.0
