"""Input checks for the ops. Each failure names the argument and what was expected."""
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def check_float(t, name):
    check_tensor(t, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_param(t, name, shape, x):
    """An optional parameter tensor: given shape, x's device, and x's dtype or float32."""
    if t is None:
        return
    check_tensor(t, name)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to one device")
    if t.dtype != x.dtype and t.dtype != torch.float32:
        raise TypeError(
            f"{name} has dtype {t.dtype} but x has {x.dtype}; parameters must be x's dtype or "
            "float32 (fp32 master parameters)")


def is_channels_last_like(x):
    """True when x is stored as [N, *spatial, C] (channels_last, channels_last_3d, [N, L, C])."""
    if x.dim() < 3:
        return False
    return x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def kernel_layout_like(x):
    """An empty tensor with the layout the kernels use for x: channels-last kept, else contiguous."""
    if not x.is_contiguous() and is_channels_last_like(x):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def is_dense(x):
    """True when x's elements fill one block of memory in some order of its dims (contiguous,
    channels-last or any other permutation): the layouts the sampler steps take without a copy."""
    expected = 1  # as torch's own test: dims of size 0 or 1 do not count
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def dense_like(x):
    """An empty tensor with x's strides when x is dense, else contiguous: the sampler steps'
    outputs."""
    if is_dense(x):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
