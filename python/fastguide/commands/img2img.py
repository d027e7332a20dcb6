"""`fastguide img2img MODEL --image IMG --strength S`: SDEdit (Meng et al. 2022). Each image is
noised part of the way, to the sampler's step round(S·steps) from the end, and sampled from
there with any sampler and guidance: S = 0 returns the input, S = 1 is plain sampling from the
seed's noise (the same image as `fastguide sample` with that seed and label).
"""
import time

from ..cliutil import unit_interval
from ..editing.api import img2img_job, prepare_inputs
from ..editing.sdedit import img2img_steps
from ..train.data import float_to_uint8
from .editing import (BASE_GROUPS, COMPARE_LIMIT, EditRun, add_common_arguments, announce,
                      build_base, copy_sample_arguments, parse_labels, parse_seeds,
                      save_comparison, setup_device, user_errors)

__all__ = ["add_arguments", "main", "EXAMPLES"]

EXAMPLES = """examples:
  fastguide img2img digits_unet --image digits.npz --strength 0.5 --class-labels 3 --cfg-scale 2
  fastguide img2img digits_unet --image one_digit.png --seeds 0-15 --strength 0.7 \\
      --class-labels 8 --sampler dpmpp_2m --steps 20
"""


def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    add_common_arguments(p, "the diffusion model: a checkpoint, a shipped model or a preset",
                         out="img2img")
    g = p.add_argument_group("img2img")
    g.add_argument("--strength", type=unit_interval, default=0.5,
                   help="how far the images are noised, in [0, 1]: 0 returns them, 1 ignores "
                        "them")
    copy_sample_arguments(p, BASE_GROUPS)


def main(args):
    seeds, labels = parse_seeds(args), parse_labels(args)
    device = setup_device(args)
    pipe, gs = build_base(args, device)
    steps = user_errors(img2img_steps, gs, args.strength)
    inputs = user_errors(prepare_inputs, gs, args.image, seeds, labels, "--image", "--seeds")
    job = img2img_job(gs, inputs, args.strength)
    announce(pipe.notes + gs.notes + inputs.notes)
    print(f"strength {args.strength:g}: the last {steps} of {gs.num_steps} sampler steps")
    c, h, w = gs.image_shape()
    run = EditRun(args, (h, w, c), ["compare.png"])
    run.check(inputs.seeds)
    start = time.perf_counter()
    given = [inputs.images.numpy()]
    images, out_labels = run.generate(job, inputs.seeds, inputs.labels, device, given)
    if images is not None:
        originals = float_to_uint8(inputs.images).numpy()
        index = [k % len(originals) for k in range(min(len(images), COMPARE_LIMIT))]
        shown = (originals[index], images[:len(index)])
        run.write(images, out_labels, inputs.seeds, given,
                  {"compare.png": lambda tmp: save_comparison(shown, tmp)}, start)
    run.finish()
