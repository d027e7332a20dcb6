"""Model architectures for `fastguide train --arch NAME`: the small digits models shipped in
fastguide/assets, and every guided-diffusion preset (fastguide.nn.presets)."""
from ..nn import presets
from ..nn.classifier import EncoderUNet
from ..nn.unet import UNet

__all__ = ["ARCHS", "build_arch", "arch_names"]

# 8x8 grey digits: two levels (8x8, 4x4), attention at 4x4, 32 channels (0.8M parameters).
_DIGITS = dict(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1,
               attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
               use_scale_shift_norm=True, resblock_updown=True)


def digits_unet(num_classes=10, null_class=True, **kw):
    return UNet(out_channels=1, num_classes=num_classes, null_class=null_class, **dict(_DIGITS, **kw))


def digits_classifier(num_classes=10, **kw):
    return EncoderUNet(out_channels=num_classes, pool="adaptive", **dict(_DIGITS, **kw))


ARCHS = {"digits_unet": digits_unet, "digits_classifier": digits_classifier}


def arch_names():
    return list(ARCHS) + presets.names()


def build_arch(name, **overrides):
    """overrides: constructor arguments (e.g. num_classes, null_class, model_channels)."""
    if name in ARCHS:
        return ARCHS[name](**overrides)
    try:
        return presets.create(name, **overrides)
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {arch_names()}") from None
