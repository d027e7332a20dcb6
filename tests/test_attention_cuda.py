"""The CUDA attention kernels (tensor-core fast path, short-sequence path, fallback, backward)
against the fp32 reference on the same GPU. Skipped without a GPU."""
import pytest
import torch

from conftest import HAS_CUDA, cuda_kernels_built
from fastguide.ops import attention, attention_reference
from test_adagn import rel_err
from test_attention import make_qkv

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if HAS_CUDA and not cuda_kernels_built():
        pytest.fail("a GPU is present but fastguide was built without CUDA kernels")


TOL = {torch.float32: 1e-5, torch.bfloat16: 2 * 2.0**-7, torch.float16: 2 * 2.0**-10}


# Head dims 32/64/128 take the tensor-core path in fp16/bf16 (L <= 64: one tile; L <= 256: the
# short-sequence tile; longer: 64-key tiles with online softmax); 24 and fp32 take the fallback.
@pytest.mark.parametrize("length", [1, 7, 64, 65, 256, 1000, 1024])
@pytest.mark.parametrize("ch", [32, 64, 128, 24])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("order,layout", [("legacy", "contiguous"), ("new", "tokens"),
                                          ("legacy", "tokens")])
def test_forward_and_backward(length, ch, dtype, order, layout):
    heads = 4
    x = make_qkv(2, heads, ch, length, dtype=dtype, layout=layout).cuda()
    xf, xr = x.detach().clone().requires_grad_(), x.detach().float().requires_grad_()
    y, ref = attention(xf, heads, order), attention_reference(xr, heads, order)
    assert rel_err(y, ref) <= TOL[dtype]
    g = torch.randn(ref.shape, device="cuda")
    y.backward(g.to(dtype))
    ref.backward(g.to(dtype).float())
    assert xf.grad.stride() == x.stride()
    assert rel_err(xf.grad, xr.grad) <= max(1e-4, 4 * TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_logits_stay_finite(dtype):
    x = make_qkv(2, 8, 64, 1024, dtype=dtype, layout="tokens", scale=30.0).cuda()
    y = attention(x, 8, "new")
    assert torch.isfinite(y).all()
    assert rel_err(y, attention_reference(x, 8, "new")) <= TOL[dtype]


def test_cuda_matches_cpu():
    x = make_qkv(2, 4, 64, 300, layout="tokens")
    assert rel_err(attention(x.cuda(), 4, "legacy").cpu(), attention(x, 4, "legacy")) <= 1e-5


def test_opcheck_cuda():
    x = make_qkv(2, 2, 64, 80, dtype=torch.bfloat16, layout="tokens").cuda().requires_grad_()
    torch.library.opcheck(torch.ops.fastguide.attention.default, (x, 2, True))
