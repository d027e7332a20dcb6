"""Image editing with ADM checkpoints: inpainting (the replacement baseline and RePaint),
img2img (SDEdit), DDIM / probability-flow inversion, and super-resolution of given images.

    inpaint(pipe, images, mask, method="repaint", jump_length=None, jump_count=None,
            **sampling)                             RePaint's j = 10, r = 10 by default
    img2img(pipe, images, strength=0.5, **sampling)
    invert(pipe, images, sampler="ddim", steps=50) -> InversionOutput (latents, rmse, ...)
    decode(pipe, latents, labels, **sampling)       sample back from latents
    upsample(upsampler, base_samples, **sampling)   guided-diffusion's super_res --base_samples

Lower level, on a GuidedSampler (one batch, images in [−1, 1]): inpainting.inpaint,
sdedit.img2img, inversion.invert / decode, and the guided-diffusion style
ddim_reverse_sample_loop and EDM style probability_flow_inversion. The CLI: `fastguide
inpaint`, `img2img`, `invert`, `upsample`. The README's numbers: evidence.py.
"""
from .inputs import InputError, read_images, check_images
from .masks import Mask, read_mask
from .repaint import repaint_schedule, check_jumps
from .inversion import (ddim_reverse_sample_loop, ddim_reverse_sample_loop_progressive,
                        probability_flow_inversion)
from .api import (inpaint, img2img, invert, decode, upsample, InversionOutput,
                  prepare_inputs)

__all__ = ["InputError", "read_images", "check_images", "Mask", "read_mask",
           "repaint_schedule", "check_jumps", "ddim_reverse_sample_loop",
           "ddim_reverse_sample_loop_progressive", "probability_flow_inversion",
           "inpaint", "img2img", "invert", "decode", "upsample", "InversionOutput",
           "prepare_inputs"]
