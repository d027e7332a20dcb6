"""Model architectures for `fastguide train --arch NAME`: the small digits models shipped in
fastguide/assets, every guided-diffusion preset (fastguide.nn.presets), and `custom`, which is
guided-diffusion's model_and_diffusion_defaults() UNet.

guided-diffusion's model flags (--num-channels, --attention-resolutions, ...) change any of
them, with guided-diffusion's names and meanings: attention resolutions are in pixels (16 means
attention at 16x16) and are turned into the UNet's downsample factors image_size // r.
"""
import torch

from ..nn import presets
from ..nn.classifier import EncoderUNet
from ..nn.unet import UNet

__all__ = ["ARCHS", "build_arch", "arch_names", "GD_DEFAULTS", "GD_FLAGS", "flag_overrides",
           "default_channel_mult"]

# 8x8 grey digits: two levels (8x8, 4x4), attention at 4x4, 32 channels (0.8M parameters).
_DIGITS = dict(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1,
               attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
               use_scale_shift_norm=True, resblock_updown=True)

# guided-diffusion's script_util.model_and_diffusion_defaults(), model part.
GD_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4,
                   num_heads_upsample=-1, num_head_channels=-1, attention_resolutions="16,8",
                   channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
                   use_scale_shift_norm=True, resblock_updown=False,
                   use_new_attention_order=False, learn_sigma=False)

# guided-diffusion flag -> (config field, what it means). Flags left out are not given.
GD_FLAGS = {
    "image_size": ("image_size", "image side in pixels"),
    "num_channels": ("model_channels", "base channel count"),
    "num_res_blocks": ("num_res_blocks", "ResBlocks per level"),
    "num_heads": ("num_heads", "attention heads (when --num-head-channels is -1)"),
    "num_heads_upsample": ("num_heads_upsample", "heads in the decoder (-1: --num-heads)"),
    "num_head_channels": ("num_head_channels", "channels per attention head (-1: use "
                                               "--num-heads)"),
    "attention_resolutions": ("attention_resolutions", "resolutions in pixels with attention, "
                                                       "comma-separated, e.g. 32,16,8"),
    "channel_mult": ("channel_mult", "channel multiplier per level, comma-separated (empty: "
                                     "guided-diffusion's table for 64/128/256/512)"),
    "dropout": ("dropout", "dropout in the ResBlocks"),
    "class_cond": ("num_classes", "class-conditional (default: when --data has labels)"),
    "use_checkpoint": ("use_checkpoint", "gradient checkpointing (less memory, more time)"),
    "use_scale_shift_norm": ("use_scale_shift_norm", "FiLM-style AdaGN conditioning"),
    "resblock_updown": ("resblock_updown", "ResBlocks for up/downsampling"),
    "use_new_attention_order": ("use_new_attention_order", "split qkv before heads"),
    "learn_sigma": ("out_channels", "also output the variance interpolation (2x channels)"),
}
# Flags that change no tensor shape: with --init they configure the loaded checkpoint.
UNSHAPED_FLAGS = ("image_size", "num_heads", "num_heads_upsample", "num_head_channels",
                  "dropout", "use_new_attention_order", "use_checkpoint")

_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4),
                 512: (0.5, 1, 1, 2, 2, 4, 4)}


def default_channel_mult(image_size):
    """guided-diffusion's create_model() table."""
    if image_size not in _CHANNEL_MULT:
        raise ValueError(f"guided-diffusion has no default channel multipliers for "
                         f"--image-size {image_size}; give --channel-mult")
    return _CHANNEL_MULT[image_size]


def _number_list(text, flag, kind):
    try:
        values = tuple(kind(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag} must be positive numbers, got {text!r}")
    return values


def _mult(text):
    values = _number_list(text, "--channel-mult", float)
    return tuple(int(v) if v == int(v) else v for v in values)


def flag_overrides(given, image_size, in_channels):
    """{guided-diffusion flag: value} (only the flags given) -> {config field: value} for a
    model of that image size and input channel count. class_cond is left to the caller."""
    out = {}
    size = given.get("image_size", image_size)
    for flag, value in given.items():
        field = GD_FLAGS[flag][0]
        if flag == "attention_resolutions":
            if size is None:
                raise ValueError("--attention-resolutions needs the model's image size: give "
                                 "--image-size")
            res = _number_list(value, "--attention-resolutions", int) if value != "" else ()
            bad = [r for r in res if size % r]
            if bad:
                raise ValueError(f"--attention-resolutions {value}: {bad} do not divide the "
                                 f"image size {size}")
            value = tuple(size // r for r in res)
        elif flag == "channel_mult":
            value = _mult(value) if value else default_channel_mult(size)
        elif flag == "learn_sigma":
            value = in_channels * (2 if value else 1)
        elif flag == "class_cond":
            continue
        out[field] = value
    return out


def digits_unet(num_classes=10, null_class=True, **kw):
    return UNet(**{**_DIGITS, "out_channels": 1, "num_classes": num_classes,
                   "null_class": null_class, **kw})


def digits_classifier(num_classes=10, **kw):
    return EncoderUNet(**{**_DIGITS, "out_channels": num_classes, "pool": "adaptive", **kw})


def custom_unet(in_channels=3, num_classes=None, **kw):
    """guided-diffusion's default UNet (model_and_diffusion_defaults()) changed by kw."""
    size = kw.get("image_size", GD_DEFAULTS["image_size"])
    cfg = dict(image_size=size, in_channels=in_channels, model_channels=128,
               out_channels=in_channels, num_res_blocks=2,
               attention_resolutions=tuple(size // r for r in (16, 8) if size % r == 0),
               dropout=0.0, channel_mult=_CHANNEL_MULT.get(size), num_classes=num_classes,
               num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
               use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False)
    cfg.update(kw)
    if cfg["channel_mult"] is None:
        default_channel_mult(size)  # raises the error naming --channel-mult
    return UNet(**cfg)


ARCHS = {"digits_unet": digits_unet, "digits_classifier": digits_classifier,
         "custom": custom_unet}


def arch_names():
    return list(ARCHS) + presets.names()


def build_arch(name, meta=False, **overrides):
    """overrides: constructor arguments (e.g. num_classes, null_class, model_channels).
    meta=True builds on the meta device (shapes and config only, no memory, no init)."""
    with torch.device("meta") if meta else torch.device("cpu"):
        if name in ARCHS:
            return ARCHS[name](**overrides)
        try:
            return presets.create(name, **overrides)
        except KeyError:
            raise ValueError(f"unknown architecture {name!r}; choose from {arch_names()}") from None
