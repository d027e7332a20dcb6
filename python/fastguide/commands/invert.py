"""`fastguide invert MODEL --image IMG`: DDIM inversion. Each image is taken back to the noise
the sampler starts from, by running its deterministic ODE backwards: --sampler ddim uses
guided-diffusion's ddim_reverse_sample step, euler / heun the probability-flow ODE on the σ
schedule. The noise is written as latents_NxCxHxW.npz (arr_0 float32 NCHW, arr_1 labels), and
sampled back with the same steps to show how faithful it is: the reconstructions are the usual
samples npz + grid.png, compare.png shows input | reconstruction, and the reconstruction error
is printed. It shrinks as --steps grows (faster for heun, a second-order method).
"""
import time

import numpy as np

from ..editing.api import decode_job, invert_images, prepare_inputs, rmse
from ..editing.inversion import check_invertible
from ..train.data import float_to_uint8
from .editing import (BASE_GROUPS, COMPARE_LIMIT, EditRun, add_common_arguments, announce,
                      build_base, copy_sample_arguments, parse_labels, save_comparison,
                      setup_device, user_errors)

__all__ = ["add_arguments", "main", "EXAMPLES"]

EXAMPLES = """examples:
  fastguide invert digits_unet --image digits.npz --sampler ddim --steps 50
  fastguide invert digits_unet --image digits.npz --sampler heun --steps 20 --no-clip-denoised
"""


def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    add_common_arguments(p, "the diffusion model: a checkpoint, a shipped model or a preset",
                         out="inverted", seeds=False)
    copy_sample_arguments(p, BASE_GROUPS)


def main(args):
    labels = parse_labels(args)
    device = setup_device(args)
    pipe, gs = build_base(args, device)
    user_errors(check_invertible, gs)
    inputs = user_errors(prepare_inputs, gs, args.image, None, labels, "--image")
    announce(pipe.notes + gs.notes + inputs.notes)
    c, h, w = gs.image_shape()
    n = len(inputs.seeds)
    latents_name = f"latents_{n}x{c}x{h}x{w}.npz"
    run = EditRun(args, (h, w, c), ["compare.png", latents_name])
    run.check(inputs.seeds)
    start = time.perf_counter()
    latents = invert_images(gs, inputs, device, args.batch_size, not args.no_progress)
    job, decoded = decode_job(gs, latents, inputs.seeds, inputs.labels)
    given = [inputs.images.numpy()]
    images, out_labels = run.generate(job, decoded.seeds, decoded.labels, device, given)
    if images is None:
        return run.finish()
    originals = float_to_uint8(inputs.images).numpy()
    error = rmse(images, originals)
    shown = (originals[:COMPARE_LIMIT], images[:COMPARE_LIMIT])
    arrays = {"arr_0": latents.numpy().astype(np.float32), "sampler": np.asarray(gs.sampler),
              "steps": np.asarray(gs.steps)}
    if out_labels is not None:
        arrays["arr_1"] = out_labels
    run.write(images, out_labels, inputs.seeds, given,
              {"compare.png": lambda tmp: save_comparison(shown, tmp),
               latents_name: lambda tmp: np.savez(tmp, **arrays)}, start)
    psnr = 20 * np.log10(2.0 / max(float(np.sqrt((error ** 2).mean())), 1e-12))
    print(f"reconstruction RMSE (images in [-1, 1]): mean {error.mean():.4f}, max "
          f"{error.max():.4f}; PSNR {psnr:.1f} dB; {args.sampler}, {gs.num_steps} steps")
    run.finish()
