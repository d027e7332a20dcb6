"""The CPU kernels split their work over threads (at::parallel_for); the rest of the suite runs
on one thread (conftest), so these tests run them on two and four against the pure-PyTorch
references, forward and backward, with shapes whose splits do not divide evenly."""
import pytest
import torch

from fastguide.ops import attention, attention_reference, group_norm_act, group_norm_act_reference


@pytest.fixture(params=[2, 4])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _grads(fn, inputs, grad):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(grad)
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_threaded(threads, channels_last):
    g = torch.Generator().manual_seed(threads)
    x = torch.randn(5, 128, 9, 11, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = (torch.randn(128, generator=g, dtype=torch.float64) for _ in range(2))
    scale, shift = (torch.randn(5, 128, generator=g, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    args = (x, weight, bias, scale, shift)
    out, grads = _grads(lambda *a: group_norm_act(a[0], 32, *a[1:]), args, grad)
    ref, ref_grads = _grads(lambda *a: group_norm_act_reference(a[0], 32, *a[1:]), args, grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_attention_threaded(threads, order):
    g = torch.Generator().manual_seed(10 + threads)
    qkv = torch.randn(3, 3 * 4 * 16, 301, generator=g, dtype=torch.float64)
    grad = torch.randn(3, 4 * 16, 301, generator=g, dtype=torch.float64)
    out, (dqkv,) = _grads(lambda q: attention(q, 4, order), [qkv], grad)
    ref, (ref_dqkv,) = _grads(lambda q: attention_reference(q, 4, order), [qkv], grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dqkv, ref_dqkv, rtol=1e-9, atol=1e-9)
