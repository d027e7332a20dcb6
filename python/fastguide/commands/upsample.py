"""`fastguide upsample MODEL --base-samples FILE.npz|DIR`: super-resolve images you already have
with an ADM-U upsampler (64->256, 128->512), as guided-diffusion's super_res_sample.py
--base_samples does, writing the same outputs as `fastguide sample`.

--base-samples is guided-diffusion's npz (arr_0 uint8 NHWC; class labels from arr_1 when it is
there) or a folder of PNGs, at the upsampler's low resolution (a quarter of its output size for
the released models; --low-res-size for others). Image k's noise comes from seed k as in the
second stage of `fastguide sample --upsampler`, so upsampling a sample run's npz with its seeds
gives exactly that run's upsampled images.
"""
import time

import numpy as np

from ..cliutil import CLIError, positive_int
from ..editing.api import load_upsampler, prepare_inputs
from ..editing.jobs import EditJob
from ..editing.superres import given_images
from ..pipeline import GuidedSampler
from ..train.data import float_to_uint8
from . import sample
from .editing import (COMPARE_LIMIT, EditRun, add_common_arguments, announce,
                      copy_sample_arguments, parse_labels, parse_seeds, save_comparison,
                      setup_device, user_errors)

__all__ = ["add_arguments", "main", "EXAMPLES"]

EXAMPLES = """examples:
  fastguide sample --model 64x64_diffusion.pt --classifier 64x64_classifier.pt --seeds 0-15 \\
      --out base/
  fastguide upsample 64_256_upsampler.pt --base-samples base/samples_16x64x64x3.npz \\
      --seeds 0-15 --sampler ddpm --steps 250 --out up/
  fastguide upsample 128_512_upsampler.pt --base-samples my_pngs/ --class-labels 207
"""

_GUIDANCE = ("cfg_scale", "cfg_rescale", "guidance_interval", "guidance_schedule",
             "dynamic_threshold", "unconditional")


def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    add_common_arguments(p, "the super-resolution model (ADM-U): a checkpoint or a preset",
                         image_flag="--base-samples", out="upsampled",
                         image_help="the low-resolution images: guided-diffusion's .npz (arr_0 "
                                    "uint8 NHWC, arr_1 labels) or a folder of PNGs")
    p.add_argument("--low-res-size", type=positive_int, default=None, metavar="PX",
                   help="the size the upsampler was trained to upsample from (default: its "
                        "training record, else a quarter of its image size)")
    copy_sample_arguments(p, ("sampler", "diffusion process", "the model:",
                              "output and runtime"))
    copy_sample_arguments(p, ("guidance",), dests=_GUIDANCE)


def _build(args, device):
    options = sample._shape_options(args, "")
    try:
        loaded, settings, size, notes = user_errors(
            load_upsampler, args.model, device, args.dtype, args.noise_schedule,
            args.diffusion_steps, args.image_size, args.low_res_size, options, option="MODEL")
    except CLIError as e:  # the loader's hint is sample's
        raise CLIError(str(e).replace("a base model goes to --model", "base models are edited "
                                      "with inpaint, img2img and invert")) from None
    args.classifier_scale, args.autoguidance_scale = None, 0.0  # not options of this command
    gs = user_errors(GuidedSampler, loaded.model, settings, args.sampler, args.steps,
                     schedule=args.schedule, schedule_options=sample._schedule_options(args),
                     sampler_options=sample._sampler_options(args),
                     **sample._guidance_options(args))
    return gs, size, notes


def main(args):
    seeds, labels = parse_seeds(args), parse_labels(args)
    device = setup_device(args)
    gs, size, notes = _build(args, device)
    c, h, w = gs.image_shape()
    inputs = user_errors(prepare_inputs, gs, args.base_samples, seeds, labels,
                         "--base-samples", "--seeds", size=size,
                         what=f"the upsampler ({size}px -> {h}px)")
    announce(notes + gs.notes + inputs.notes)
    run = EditRun(args, (h, w, c), ["compare.png"])
    run.check(inputs.seeds)
    start = time.perf_counter()
    given = [inputs.images.numpy()]
    job = EditJob(None, inputs.images, inputs.seeds, given_images, 0)
    images, out_labels = run.generate(job, inputs.seeds, inputs.labels, device, given, gs)
    if images is not None:
        low = float_to_uint8(inputs.images).numpy()
        index = [k % len(low) for k in range(min(len(images), COMPARE_LIMIT))]
        rows, cols = np.arange(h) * size // h, np.arange(w) * size // w  # nearest
        shown = (low[index][:, rows][:, :, cols], images[:len(index)])
        run.write(images, out_labels, inputs.seeds, given,
                  {"compare.png": lambda tmp: save_comparison(shown, tmp)}, start)
    run.finish()
