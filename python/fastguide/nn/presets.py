"""Every released guided-diffusion model, by name: fastguide.nn.presets.create("imagenet256_cond").

The arguments are what the README's sampling flags resolve to through guided-diffusion's
script_util (see ../shared/reference/adm_flops.md): attention_resolutions are downsample factors
(image_size // resolution), channel_mult comes from the image-size table, and create_classifier
hard-codes num_head_channels=64 and 1000 classes. Released checkpoints were trained with
use_fp16=True (except 512x512_diffusion); presets default to float32: pass dtype= to change it.
"""
import copy

from .classifier import EncoderUNet
from .unet import SuperResUNet, UNet

__all__ = ["PRESETS", "ALIASES", "DIFFUSION", "MODEL_CLASSES", "names", "config", "create",
           "diffusion", "canonical"]

MODEL_CLASSES = {"unet": UNet, "superres": SuperResUNet, "classifier": EncoderUNet}

_COMMON = dict(in_channels=3, num_res_blocks=2, conv_resample=True, dims=2, dropout=0.0,
               num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
               use_new_attention_order=False, use_checkpoint=False)
_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4),
         512: (0.5, 1, 1, 2, 2, 4, 4)}


def _unet(image_size, model_channels, attention_resolutions, num_heads=4, num_head_channels=64,
          num_classes=1000, kind="unet", **kw):
    cfg = dict(_COMMON, kind=kind, image_size=image_size, model_channels=model_channels,
               out_channels=6, attention_resolutions=attention_resolutions,
               channel_mult=_MULT[image_size], num_classes=num_classes, num_heads=num_heads,
               num_head_channels=num_head_channels)
    cfg.update(kw)
    return cfg


def _classifier(image_size, attention_resolutions, num_res_blocks=2):
    return dict(_COMMON, kind="classifier", image_size=image_size, model_channels=128,
                out_channels=1000, num_res_blocks=num_res_blocks,
                attention_resolutions=attention_resolutions, channel_mult=_MULT[image_size],
                num_heads=1, num_head_channels=64, pool="attention")


PRESETS = {
    "imagenet64_cond": _unet(64, 192, (2, 4, 8), num_res_blocks=3, dropout=0.1,
                             use_new_attention_order=True),
    "imagenet128_cond": _unet(128, 256, (4, 8, 16), num_head_channels=-1),
    "imagenet256_cond": _unet(256, 256, (8, 16, 32)),
    "imagenet256_uncond": _unet(256, 256, (8, 16, 32), num_classes=None),
    "imagenet512_cond": _unet(512, 256, (16, 32, 64)),
    "lsun256": _unet(256, 256, (8, 16, 32), num_classes=None, dropout=0.1),
    # The upsamplers use (1, 1, 2, 2, 4, 4) at 512 too (sr_create_model's table).
    "upsampler64_256": _unet(256, 192, (8, 16, 32), num_head_channels=-1, kind="superres"),
    "upsampler128_512": _unet(512, 192, (16, 32), kind="superres", channel_mult=_MULT[256]),
    "classifier64": _classifier(64, (2, 4, 8), num_res_blocks=4),
    "classifier128": _classifier(128, (4, 8, 16)),
    "classifier256": _classifier(256, (8, 16, 32)),
    "classifier512": _classifier(512, (16, 32, 64)),
}

# The released checkpoints' file names (without .pt) name their presets too.
ALIASES = {
    "64x64_diffusion": "imagenet64_cond", "128x128_diffusion": "imagenet128_cond",
    "256x256_diffusion": "imagenet256_cond", "256x256_diffusion_uncond": "imagenet256_uncond",
    "512x512_diffusion": "imagenet512_cond", "lsun_bedroom": "lsun256", "lsun_cat": "lsun256",
    "lsun_horse": "lsun256", "64_256_upsampler": "upsampler64_256",
    "128_512_upsampler": "upsampler128_512", "64x64_classifier": "classifier64",
    "128x128_classifier": "classifier128", "256x256_classifier": "classifier256",
    "512x512_classifier": "classifier512",
}


# The process each released model was trained with: the --diffusion_steps, --noise_schedule and
# --learn_sigma of guided-diffusion's README flags (the 64x64 model alone uses the cosine
# schedule). Classifiers guide the process of the model they are paired with, so they have none.
_LINEAR = dict(steps=1000, noise_schedule="linear", learn_sigma=True)
DIFFUSION = {
    "imagenet64_cond": dict(steps=1000, noise_schedule="cosine", learn_sigma=True),
    "imagenet128_cond": _LINEAR, "imagenet256_cond": _LINEAR, "imagenet256_uncond": _LINEAR,
    "imagenet512_cond": _LINEAR, "lsun256": _LINEAR,
    "upsampler64_256": _LINEAR, "upsampler128_512": _LINEAR,
}


def names():
    """The preset names (aliases excluded)."""
    return list(PRESETS)


def canonical(name):
    """The preset name for a preset, an alias or a released checkpoint's file name."""
    key = str(name).removesuffix(".pt")
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {names()}, aliases: {list(ALIASES)}")
    return key


def config(name):
    """The preset's constructor arguments plus "kind" (a copy)."""
    return copy.deepcopy(PRESETS[canonical(name)])


def diffusion(name):
    """The diffusion process the released model was trained with (steps, noise_schedule,
    learn_sigma), or None for a classifier."""
    settings = DIFFUSION.get(canonical(name))
    return dict(settings) if settings is not None else None


def create(name, **overrides):
    """Build a preset's model (random init). overrides replace constructor arguments, e.g.
    dtype=torch.bfloat16, backend="reference", null_class=True, use_checkpoint=True."""
    cfg = config(name)
    cfg.update(overrides)
    cls = MODEL_CLASSES[cfg.pop("kind")]
    return cls(**cfg)
