"""guided-diffusion's script_util, on fastguide. A guided-diffusion sampling script only changes

    from guided_diffusion.script_util import (...)
to
    from fastguide.compat.guided_diffusion import (...)

Same names, same flags, same meanings (attention_resolutions are resolutions, turned into
downsample factors image_size // res; channel_mult "" picks guided-diffusion's table). The models
are fastguide's UNet / SuperResUNet / EncoderUNet, which take the same state dicts and calls;
use_fp16=True builds them with a float16 trunk (convert_to_fp16() is then a no-op). The
diffusion half comes from fastguide.diffusion.
"""
import argparse
import inspect

from ..nn.classifier import EncoderUNet
from ..nn.unet import SuperResUNet, UNet

__all__ = ["NUM_CLASSES", "diffusion_defaults", "model_and_diffusion_defaults",
           "classifier_defaults", "classifier_and_diffusion_defaults",
           "sr_model_and_diffusion_defaults", "create_model", "create_model_and_diffusion",
           "create_classifier", "create_classifier_and_diffusion", "sr_create_model",
           "sr_create_model_and_diffusion", "create_gaussian_diffusion", "add_dict_to_argparser",
           "args_to_dict", "str2bool"]

NUM_CLASSES = 1000

_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
         64: (1, 2, 3, 4)}
_SR_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


# ---- defaults ----------------------------------------------------------------------------------

def diffusion_defaults():
    return dict(learn_sigma=False, diffusion_steps=1000, noise_schedule="linear",
                timestep_respacing="", use_kl=False, predict_xstart=False,
                rescale_timesteps=False, rescale_learned_sigmas=False)


def classifier_defaults():
    return dict(image_size=64, classifier_use_fp16=False, classifier_width=128,
                classifier_depth=2, classifier_attention_resolutions="32,16,8",
                classifier_use_scale_shift_norm=True, classifier_resblock_updown=True,
                classifier_pool="attention")


def model_and_diffusion_defaults():
    res = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4,
               num_heads_upsample=-1, num_head_channels=-1, attention_resolutions="16,8",
               channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
               use_scale_shift_norm=True, resblock_updown=False, use_fp16=False,
               use_new_attention_order=False)
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults():
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def sr_model_and_diffusion_defaults():
    res = model_and_diffusion_defaults()
    res["large_size"], res["small_size"] = 256, 64
    names = inspect.signature(sr_create_model_and_diffusion).parameters
    return {k: v for k, v in res.items() if k in names}


# ---- flags -> constructor arguments ------------------------------------------------------------

def _attention_ds(image_size, attention_resolutions):
    return tuple(image_size // int(res) for res in attention_resolutions.split(","))


def _channel_mult(image_size, channel_mult, table=_MULT, what="image size"):
    if channel_mult:
        return tuple(int(m) for m in channel_mult.split(","))
    if image_size not in table:
        raise ValueError(f"unsupported {what}: {image_size} (guided-diffusion has channel_mult "
                         f"tables for {sorted(table)}; pass channel_mult explicitly)")
    return table[image_size]


def create_model(image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False,
                 class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 dropout=0, resblock_updown=False, use_fp16=False, use_new_attention_order=False):
    return UNet(
        image_size=image_size, in_channels=3, model_channels=num_channels,
        out_channels=6 if learn_sigma else 3, num_res_blocks=num_res_blocks,
        attention_resolutions=_attention_ds(image_size, attention_resolutions), dropout=dropout,
        channel_mult=_channel_mult(image_size, channel_mult),
        num_classes=NUM_CLASSES if class_cond else None, use_checkpoint=use_checkpoint,
        use_fp16=use_fp16, num_heads=num_heads, num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order)


def create_classifier(image_size, classifier_use_fp16, classifier_width, classifier_depth,
                      classifier_attention_resolutions, classifier_use_scale_shift_norm,
                      classifier_resblock_updown, classifier_pool):
    return EncoderUNet(
        image_size=image_size, in_channels=3, model_channels=classifier_width,
        out_channels=1000, num_res_blocks=classifier_depth,
        attention_resolutions=_attention_ds(image_size, classifier_attention_resolutions),
        channel_mult=_channel_mult(image_size, ""), use_fp16=classifier_use_fp16,
        num_head_channels=64, use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown, pool=classifier_pool)


def sr_create_model(large_size, small_size, num_channels, num_res_blocks, learn_sigma, class_cond,
                    use_checkpoint, attention_resolutions, num_heads, num_head_channels,
                    num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown, use_fp16):
    del small_size  # the architecture depends on large_size only
    return SuperResUNet(
        image_size=large_size, in_channels=3, model_channels=num_channels,
        out_channels=6 if learn_sigma else 3, num_res_blocks=num_res_blocks,
        attention_resolutions=_attention_ds(large_size, attention_resolutions), dropout=dropout,
        channel_mult=_channel_mult(large_size, "", _SR_MULT, "large size"),
        num_classes=NUM_CLASSES if class_cond else None, use_checkpoint=use_checkpoint,
        num_heads=num_heads, num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown, use_fp16=use_fp16)


# ---- models + diffusion ------------------------------------------------------------------------

def create_gaussian_diffusion(*, steps=1000, learn_sigma=False, sigma_small=False,
                              noise_schedule="linear", use_kl=False, predict_xstart=False,
                              rescale_timesteps=False, rescale_learned_sigmas=False,
                              timestep_respacing=""):
    try:
        from ..diffusion.compat import create_gaussian_diffusion as create
    except ImportError as e:
        raise NotImplementedError(
            "create_gaussian_diffusion needs fastguide.diffusion.compat, which could not be "
            f"imported ({e}); the models of this module work without it") from e
    return create(steps=steps, learn_sigma=learn_sigma, sigma_small=sigma_small,
                  noise_schedule=noise_schedule, use_kl=use_kl, predict_xstart=predict_xstart,
                  rescale_timesteps=rescale_timesteps,
                  rescale_learned_sigmas=rescale_learned_sigmas,
                  timestep_respacing=timestep_respacing)


def _diffusion(diffusion_steps, learn_sigma, noise_schedule, timestep_respacing, use_kl,
               predict_xstart, rescale_timesteps, rescale_learned_sigmas):
    return create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule,
        use_kl=use_kl, predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing)


def create_model_and_diffusion(image_size, class_cond, learn_sigma, num_channels, num_res_blocks,
                               channel_mult, num_heads, num_head_channels, num_heads_upsample,
                               attention_resolutions, dropout, diffusion_steps, noise_schedule,
                               timestep_respacing, use_kl, predict_xstart, rescale_timesteps,
                               rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
                               resblock_updown, use_fp16, use_new_attention_order):
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult=channel_mult,
        learn_sigma=learn_sigma, class_cond=class_cond, use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout,
        resblock_updown=resblock_updown, use_fp16=use_fp16,
        use_new_attention_order=use_new_attention_order)
    diffusion = _diffusion(diffusion_steps, learn_sigma, noise_schedule, timestep_respacing,
                           use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas)
    return model, diffusion


def create_classifier_and_diffusion(image_size, classifier_use_fp16, classifier_width,
                                    classifier_depth, classifier_attention_resolutions,
                                    classifier_use_scale_shift_norm, classifier_resblock_updown,
                                    classifier_pool, learn_sigma, diffusion_steps, noise_schedule,
                                    timestep_respacing, use_kl, predict_xstart, rescale_timesteps,
                                    rescale_learned_sigmas):
    classifier = create_classifier(
        image_size, classifier_use_fp16, classifier_width, classifier_depth,
        classifier_attention_resolutions, classifier_use_scale_shift_norm,
        classifier_resblock_updown, classifier_pool)
    diffusion = _diffusion(diffusion_steps, learn_sigma, noise_schedule, timestep_respacing,
                           use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas)
    return classifier, diffusion


def sr_create_model_and_diffusion(large_size, small_size, class_cond, learn_sigma, num_channels,
                                  num_res_blocks, num_heads, num_head_channels,
                                  num_heads_upsample, attention_resolutions, dropout,
                                  diffusion_steps, noise_schedule, timestep_respacing, use_kl,
                                  predict_xstart, rescale_timesteps, rescale_learned_sigmas,
                                  use_checkpoint, use_scale_shift_norm, resblock_updown,
                                  use_fp16):
    model = sr_create_model(
        large_size, small_size, num_channels, num_res_blocks, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout,
        resblock_updown=resblock_updown, use_fp16=use_fp16)
    diffusion = _diffusion(diffusion_steps, learn_sigma, noise_schedule, timestep_respacing,
                           use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas)
    return model, diffusion


# ---- argparse helpers --------------------------------------------------------------------------

def add_dict_to_argparser(parser, default_dict):
    """One --flag per key, typed by its default (bools parsed by str2bool, None as str)."""
    for k, v in default_dict.items():
        v_type = str if v is None else str2bool if isinstance(v, bool) else type(v)
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError("boolean value expected")
