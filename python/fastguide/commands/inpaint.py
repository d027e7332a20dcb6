"""`fastguide inpaint MODEL --image IMG --mask MASK`: generate the masked pixels of each image
and keep the others exactly, with the replacement baseline or RePaint's resampling (Lugmayr et
al. 2022), any sampler and any guidance.

The mask: white (255) marks the pixels to inpaint, black (0) those to keep (--invert-mask for
RePaint-style keep masks); one PNG for every image, a folder with one per image, or a .npy.
A grey mask is refused unless --mask-threshold says how to binarise it.
"""
import time

from ..cliutil import nonnegative_float, nonnegative_int, positive_int, warn
from ..editing.api import inpaint_job, prepare_inputs
from ..editing.inpainting import METHODS
from ..editing.masks import read_mask
from ..editing.repaint import JUMP_COUNT, JUMP_LENGTH
from ..train.data import float_to_uint8
from .editing import (BASE_GROUPS, COMPARE_LIMIT, EditRun, add_common_arguments, announce, build_base,
                      copy_sample_arguments, parse_labels, parse_seeds, save_comparison,
                      setup_device, user_errors)

__all__ = ["add_arguments", "main", "EXAMPLES"]

EXAMPLES = """examples:
  fastguide inpaint digits_unet --image digits.npz --mask right_half.png --cfg-scale 2
  fastguide inpaint digits_unet --image digits.npz --mask right_half.png --method replace
  fastguide inpaint 256x256_diffusion.pt --image photo.png --mask hole.png --class-labels 207 \\
      --classifier 256x256_classifier.pt --sampler ddpm --steps 250 --seeds 0-7
"""

def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    add_common_arguments(p, "the diffusion model: a checkpoint, a shipped model or a preset",
                         out="inpainted")
    g = p.add_argument_group("inpainting")
    g.add_argument("--mask", required=True,
                   help="white = inpaint, black = keep: a PNG for all images, a folder of "
                        "PNGs (one per image) or a .npy")
    g.add_argument("--mask-threshold", type=nonnegative_float, default=None, metavar="T",
                   help="binarise a grey mask: pixels >= T (0..255) are inpainted")
    g.add_argument("--invert-mask", action="store_true",
                   help="the mask marks the pixels to keep (RePaint's convention)")
    g.add_argument("--method", choices=METHODS, default="repaint",
                   help="repaint: RePaint's resampling schedule; replace: the baseline that "
                        "replaces the known region by q(x_t | x0) after every step")
    g.add_argument("--jump-length", type=positive_int, default=None, metavar="J",
                   help=f"RePaint: steps per jump back (default {JUMP_LENGTH}, or --steps - 1 "
                        "when that is less; below --steps)")
    g.add_argument("--jump-count", type=nonnegative_int, default=None, metavar="R",
                   help=f"RePaint: jumps back at each jump point (default {JUMP_COUNT}; RePaint's "
                        "jump_n_sample minus 1; 0 is the baseline)")
    copy_sample_arguments(p, BASE_GROUPS)


def _jumps(args):
    """The jump flags, announced and dropped when --method replace takes none."""
    if args.method == "repaint":
        return args.jump_length, args.jump_count
    for flag in ("jump_length", "jump_count"):
        if getattr(args, flag) is not None:
            warn(f"--{flag.replace('_', '-')} does not apply to --method replace; ignored")
    return None, None


def main(args):
    seeds, labels = parse_seeds(args), parse_labels(args)
    jump_length, jump_count = _jumps(args)
    device = setup_device(args)
    pipe, gs = build_base(args, device)
    inputs = user_errors(prepare_inputs, gs, args.image, seeds, labels, "--image", "--seeds")
    mask = user_errors(read_mask, args.mask, inputs.images.shape[-1], len(inputs.images),
                       args.mask_threshold, args.invert_mask)
    job, notes = user_errors(inpaint_job, gs, inputs, mask, args.method, jump_length,
                             jump_count)
    announce(pipe.notes + gs.notes + inputs.notes + notes)
    if args.method == "repaint":
        print(f"RePaint: {job.num_steps} sampler steps per image ({gs.num_steps} without "
              "resampling)")
    c, h, w = gs.image_shape()
    run = EditRun(args, (h, w, c), ["compare.png"])
    run.check(inputs.seeds)
    start = time.perf_counter()
    given = [inputs.images.numpy(), mask.inpaint.numpy()]
    images, out_labels = run.generate(job, inputs.seeds, inputs.labels, device, given)
    if images is not None:  # rank 0 writes
        originals = float_to_uint8(inputs.images).numpy()
        index = [k % len(originals) for k in range(min(len(images), COMPARE_LIMIT))]
        masked = originals[index].copy()
        masked[mask.for_images(index).permute(0, 2, 3, 1).expand(-1, -1, -1, c).numpy()] = 128
        shown = (originals[index], masked, images[:len(index)])
        run.write(images, out_labels, inputs.seeds, given,
                  {"compare.png": lambda tmp: save_comparison(shown, tmp)}, start)
    run.finish()
