"""Validation of a model config before anything is built from it.

A fastguide checkpoint's JSON config comes from a file, so it is untrusted input: an unknown
kind, a key the constructor does not take, a string where a number belongs, or a width that
would allocate terabytes must each end in a CheckpointError that names the field, before a
single tensor is allocated.
"""
import inspect
import numbers

from .classifier import POOLS
from .infer import CheckpointError
from .presets import MODEL_CLASSES

__all__ = ["validate_config", "constructor_fields"]

_RUNTIME = ("dtype", "backend")
_DTYPES = ("float32", "float16", "bfloat16")
_BACKENDS = ("fused", "kernel", "reference", "sdpa")


def constructor_fields(kind):
    """The argument names the model class of `kind` takes (SuperResUNet forwards to UNet's)."""
    cls = MODEL_CLASSES[kind]
    if kind == "superres":
        cls = MODEL_CLASSES["unet"]
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name != "self" and p.kind not in (
        p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int_in(lo, hi, allow=()):
    def check(v):
        if v in allow and (v is None or _is_int(v)):
            return None
        if not _is_int(v) or not lo <= v <= hi:
            extra = f" (or {', '.join(map(str, allow))})" if allow else ""
            return f"an integer in {lo}..{hi}{extra}"
        return None
    return check


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


def _choice(options):
    def check(v):
        return None if v in options else f"one of {list(options)}"
    return check


def _sequence(item_check, what, allow_empty):
    def check(v):
        if not isinstance(v, (list, tuple)) or (not v and not allow_empty) or len(v) > 16:
            return f"a list of {what}" + ("" if allow_empty else " (not empty)")
        bad = [x for x in v if item_check(x) is not None]
        return f"a list of {what}, but it holds {bad[0]!r}" if bad else None
    return check


def _positive_number(v):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v <= 64
    return None if ok else "a number in (0, 64]"


def _dropout(v):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < 1
    return None if ok else "a number in [0, 1)"


# Sane ranges: wide enough for every released and plausible model, narrow enough that a typo
# cannot ask for terabytes.
_CHECKS = {
    "image_size": _int_in(1, 8192, allow=(None,)),
    "in_channels": _int_in(1, 64),
    "model_channels": _int_in(1, 4096),
    "out_channels": _int_in(1, 100_000),
    "num_res_blocks": _int_in(0, 32),
    "attention_resolutions": _sequence(_int_in(1, 1024), "positive integers", True),
    "dropout": _dropout,
    "channel_mult": _sequence(_positive_number, "numbers in (0, 64]", False),
    "conv_resample": _bool,
    "dims": _int_in(1, 3),
    "num_classes": _int_in(1, 1_000_000, allow=(None,)),
    "use_checkpoint": _bool,
    "use_fp16": _bool,
    "num_heads": _int_in(1, 1024, allow=(-1,)),
    "num_head_channels": _int_in(1, 4096, allow=(-1,)),
    "num_heads_upsample": _int_in(1, 1024, allow=(-1,)),
    "use_scale_shift_norm": _bool,
    "resblock_updown": _bool,
    "use_new_attention_order": _bool,
    "null_class": _bool,
    "pool": _choice(POOLS),
    "dtype": _choice(_DTYPES),
    "backend": _choice(_BACKENDS),
}


def validate_config(config, source="the config"):
    """Raise CheckpointError naming the first bad field of config (a dict with "kind" and the
    constructor's arguments); return config unchanged when it is sound."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: a model config must be a JSON object, got "
                              f"{type(config).__name__}")
    kind = config.get("kind")
    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"{source}: field 'kind' is {kind!r}; expected one of "
                              f"{list(MODEL_CLASSES)}")
    fields = constructor_fields(kind)
    unknown = sorted(k for k in config if k != "kind" and k not in fields and k not in _RUNTIME)
    if unknown:
        raise CheckpointError(f"{source}: unknown field {unknown[0]!r} for a {kind} model; "
                              f"known fields: {sorted(fields)}")
    missing = [name for name, p in fields.items()
               if p.default is inspect.Parameter.empty and name not in config]
    if missing:
        raise CheckpointError(f"{source}: missing field {missing[0]!r} for a {kind} model")
    for name, value in config.items():
        check = _CHECKS.get(name)
        problem = check(value) if check is not None else None
        if problem:
            raise CheckpointError(f"{source}: field {name!r} must be {problem}, got {value!r}")
    return config
