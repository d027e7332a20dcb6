"""group_norm_act on bad input: every failure is a clear error naming the argument."""
import re

import numpy as np
import pytest
import torch

from fastguide.ops import group_norm_act

X = torch.randn(2, 8, 4, 4)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: group_norm_act(X, 3), ValueError, "num_groups=3 must be positive and divide the channel count C=8"),
    (lambda: group_norm_act(X, 0), ValueError, "num_groups=0 must be positive"),
    (lambda: group_norm_act(X, 2.0), TypeError, "num_groups must be an int"),
    (lambda: group_norm_act(torch.randn(8), 2), ValueError, "x must be [N, C, *spatial]"),
    (lambda: group_norm_act(X.long(), 2), TypeError, "x must be float32, float16, bfloat16 or float64"),
    (lambda: group_norm_act(X.numpy(), 2), TypeError, "x must be a torch.Tensor"),
    (lambda: group_norm_act(X.to_sparse(), 2), ValueError, "x must be a dense (strided) tensor"),
    (lambda: group_norm_act(X, 2, scale=torch.randn(2, 4)), ValueError, "scale must have shape [2, 8], got [2, 4]"),
    (lambda: group_norm_act(X, 2, shift=torch.randn(8)), ValueError, "shift must have shape [2, 8], got [8]"),
    (lambda: group_norm_act(X, 2, torch.randn(4)), ValueError, "weight must have shape [8], got [4]"),
    (lambda: group_norm_act(X, 2, bias=torch.randn(8, 1)), ValueError, "bias must have shape [8], got [8, 1]"),
    (lambda: group_norm_act(X, 2, torch.randn(8, device="meta")), ValueError, "weight is on meta but x is on cpu"),
    (lambda: group_norm_act(X.bfloat16(), 2, torch.randn(8).half()), TypeError,
     "weight has dtype torch.float16 but x has torch.bfloat16"),
    (lambda: group_norm_act(X, 2, scale=torch.randn(2, 8).double()), TypeError, "scale has dtype torch.float64"),
    (lambda: group_norm_act(X, 2, act="relu"), ValueError, "act must be 'silu' or None"),
    (lambda: group_norm_act(X, 2, eps=-1.0), ValueError, "eps must be positive"),
])
def test_bad_input_is_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        call()


def test_direct_op_call_is_checked_in_cpp_too():
    with pytest.raises(RuntimeError, match="must be positive and divide the channel count C=8"):
        torch.ops.fastguide.group_norm_act(X, 3, None, None, None, None, True, 1e-5)
    with pytest.raises(RuntimeError, match=re.escape("scale must have shape [2, 8]")):
        torch.ops.fastguide.group_norm_act(X, 2, None, None, torch.randn(3, 8), None, True, 1e-5)


def test_numpy_roundtrip_unaffected():
    """The op never writes into its input."""
    x = X.clone()
    group_norm_act(x, 2)
    assert np.array_equal(x.numpy(), X.numpy())
