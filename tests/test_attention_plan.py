"""The CUDA attention plan (csrc/attention/tc_config.h, the function the CUDA dispatch calls):
which kernels and tiles each dtype, head dim and length get on each supported GPU, from its
limits alone. Runs on any machine: the plan needs no GPU."""
import re

import pytest
import torch

from fastguide.ops.attention import DEVICE_LIMITS, attention_cuda_plan

HEAD_DIMS = range(8, 257, 8)
TC = re.compile(r"tensor cores: Dp (\d+), forward (\d+)x(\d+), dQ (\d+)x(\d+)/(\d) stage\(s\), "
                r"dKdV (\d+)x(\d+)/(\d) stage\(s\) (fused|split); shared memory (\d+)/(\d+)/(\d+) bytes")


def plan(dtype, d, length=1024, batch_heads=128, device="A100"):
    line = attention_cuda_plan(dtype, d, length, batch_heads, device)
    m = TC.fullmatch(line)
    return (m.groups() if m else None), line


@pytest.mark.parametrize("device", sorted(DEVICE_LIMITS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_multiple_of_8_up_to_256_takes_the_tensor_cores(device, dtype):
    smem_optin = DEVICE_LIMITS[device][0]
    for d in HEAD_DIMS:
        for length in (1, 64, 1024):
            g, line = plan(dtype, d, length, 128, device)
            assert g is not None, line
            dp = int(g[0])
            assert dp >= d and dp - d < 64 and dp % 32 == 0, line  # the smallest bucket >= d
            assert max(int(b) for b in g[10:13]) <= smem_optin, line


def test_buckets():
    got = {d: int(plan(torch.bfloat16, d)[0][0]) for d in HEAD_DIMS}
    assert [got[d] for d in (8, 32, 40, 64, 72, 96, 104, 128, 136, 160, 168, 192, 200, 256)] == \
        [32, 32, 64, 64, 96, 96, 128, 128, 160, 160, 192, 192, 256, 256]


def test_portable_tiles_fit_the_99_kb_of_sm86_sm89():
    """Everything but the 8-warp forward of head dims 200..256 fits 101,376 bytes; that tile is
    taken only where the opt-in is larger."""
    for d in HEAD_DIMS:
        g, line = plan(torch.bfloat16, d, 4096, 1024, "A10")
        assert max(int(b) for b in g[10:13]) <= 101376, line
        big, line_big = plan(torch.bfloat16, d, 4096, 1024, "H100")
        if d > 192:
            assert g[1] == "64" and big[1] == "128" and int(big[10]) == 131072, (line, line_big)
        else:
            assert g[1] == big[1] == "128", (line, line_big)


def test_short_sequences_and_few_heads_take_64_query_blocks():
    assert plan(torch.bfloat16, 64, 64, 4096, "H100")[0][1] == "64"      # L <= 64: one block
    assert plan(torch.bfloat16, 64, 1024, 8, "H100")[0][1] == "64"       # 64 blocks < 132 SMs
    assert plan(torch.bfloat16, 64, 1024, 32 * 8, "H100")[0][1] == "128"
    assert plan(torch.bfloat16, 64, 256, 32 * 16, "H100")[0][1] == "128"


def test_large_head_dims_split_dk_and_dv():
    assert plan(torch.bfloat16, 128, device="L4")[0][9] == "fused"
    assert plan(torch.bfloat16, 136, device="L4")[0][9] == "split"


@pytest.mark.parametrize("dtype,d,device,reason", [
    (torch.float32, 64, "H100", "float32"),
    (torch.bfloat16, 60, "H100", "head dim 60 is not a multiple of 8"),
    (torch.float16, 264, "H100", "head dim 264 is not a multiple of 8 up to 256"),
    (torch.float16, 64, (65536, 40, 7, 5), "compute capability below 8.0"),
    (torch.float16, 256, (49152, 40, 8, 0), "opt-in 49152 < "),
])
def test_simt_fallbacks_say_why(dtype, d, device, reason):
    line = attention_cuda_plan(dtype, d, 1024, 64, device)
    assert "SIMT kernels" in line and reason in line, line


@pytest.mark.parametrize("args,message", [
    ((torch.float64, 64, 10, 1, "A100"), "dtype must be"),
    ((torch.float16, 0, 10, 1, "A100"), "head_dim must be a positive int"),
    ((torch.float16, 64, -1, 1, "A100"), "length must be a non-negative int"),
    ((torch.float16, 64, 10, 1, "a GPU from the future"), "device must be one of"),
])
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        attention_cuda_plan(*args)
