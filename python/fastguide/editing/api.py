"""The Python face of image editing, over an ADMPipeline (the base model, its classifier and
weak model, each with its process):

    pipe = fastguide.ADMPipeline.from_checkpoint("digits_unet")
    out = inpaint(pipe, "digits.npz", "right_half.png", method="repaint", jump_length=5,
                  jump_count=4, cfg_scale=2.0, sampler="ddpm", steps=50)
    out = img2img(pipe, images, strength=0.6, class_labels=[3], sampler="dpmpp_2m", steps=20)
    inv = invert(pipe, images, sampler="ddim", steps=50)          # inv.latents, inv.rmse
    out = decode(pipe, inv.latents, labels=inv.labels, sampler="ddim", steps=50)
    out = upsample("64_256_upsampler.pt", "samples_16x64x64x3.npz", steps=250)

images: a path (PNG, folder, guided-diffusion .npz with its arr_1 labels, .npy) or an array
(inputs.py); masks likewise (masks.py). Output k is the edit of image k mod N with seeds[k]
(default: one seed per image, 0..N−1). Labels: class_labels (cycled over the outputs), else the
npz's arr_1, else none (a class-conditional model then needs unconditional=True: its null
label). Every other keyword argument is GuidedSampler's (sampler, steps, cfg_scale,
classifier_scale, ...). Results are PipelineOutput: uint8 NHWC images, labels, seeds, notes.

The *_job builders are what the CLI commands run, with their own option names in messages.
"""
import dataclasses

import numpy as np
import torch

from ..pipeline import (GuidedSampler, PipelineOutput, generate, load_model,
                        resolve_diffusion)
from ..pipeline.guided import OptionError
from ..train.data import float_to_uint8
from . import inpainting, inversion, sdedit
from .core import model_kwargs
from .inputs import InputError, check_images, read_images
from .jobs import EditJob, check_seeds, cycle
from .masks import read_mask
from .repaint import denoising_steps
from .superres import expected_low_res_size, given_images

__all__ = ["inpaint", "img2img", "invert", "decode", "upsample", "InversionOutput",
           "EditInputs", "prepare_inputs", "inpaint_job", "img2img_job", "decode_job",
           "invert_images", "load_upsampler", "rmse", "mask_note"]


@dataclasses.dataclass
class EditInputs:
    images: torch.Tensor    # float NCHW in [−1, 1], the distinct inputs
    seeds: list             # one per output
    labels: list | None     # one per output
    notes: list


def prepare_inputs(gs, images, seeds=None, class_labels=None, option="images",
                   seeds_option="seeds", size=None, what="the model"):
    """Read and check the images for gs's model, and pick each output's seed and label."""
    x, file_labels = read_images(images, option)
    channels, native = gs.image_shape()[:2]
    check_images(x, channels, size or native, option, what)
    seeds = check_seeds(range(len(x)) if seeds is None else seeds, seeds_option)
    notes = []
    if len(seeds) < len(x):
        notes.append(f"{len(x)} images but {len(seeds)} seeds: only the first {len(seeds)} "
                     "images are edited")
    labels = output_labels(gs, class_labels, file_labels, len(seeds), option)
    return EditInputs(x, seeds, labels, notes)


def output_labels(gs, class_labels, file_labels, count, option="images"):
    """Each output's label: class_labels cycled, else the images' own (arr_1), else None.
    An unconditional model carries the images' labels through unused; a run on the null label
    has none."""
    k = gs.num_classes
    labels = cycle([int(c) for c in class_labels] if class_labels is not None else (
        None if file_labels is None else file_labels.tolist()), count)
    if k is None:
        if class_labels is not None:
            raise OptionError("class_labels", "were given, but neither the model nor a "
                                              "classifier is class-conditional")
        return labels  # the images' own labels, carried into the outputs (and unused)
    null_label_run = gs.unconditional and gs.classifier is None
    if labels is None and not null_label_run:
        who = "model" if gs.conditional else "classifier"
        raise OptionError("class_labels", f"are needed: the {who} is class-conditional ({k} "
                                          "classes) and the images carry no labels (an npz's "
                                          "arr_1); give class labels, or run the model on its "
                                          "null label (--unconditional)")
    bad = sorted({c for c in labels or () if not 0 <= c < k})
    if bad and class_labels is not None:
        raise OptionError("class_labels", f"{bad[:10]} are outside 0..{k - 1}")
    if bad:
        raise InputError(f"{option}: its labels (arr_1) {bad[:10]} are outside 0..{k - 1}, the "
                         "model's classes; give class labels instead")
    return None if null_label_run else labels  # the null label: the images depend on none


def _run(job, inputs, device, batch_size=64, progress=True, cache=None, notes=(),
         upsampler=None, output_type="np"):
    """generate() over the job's seeds -> PipelineOutput."""
    if output_type not in ("np", "pil"):
        raise ValueError(f"output_type must be 'np' or 'pil', got {output_type!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with torch.no_grad():
        images, labels = generate(job, inputs.seeds, inputs.labels, batch_size, device,
                                  upsampler, progress=progress, cache=cache)
    out = PipelineOutput(images, labels, inputs.seeds, [*notes, *inputs.notes])
    if output_type == "pil" and images is not None:
        out.images = out.pil()
    return out


def _guided(pipe, options):
    base, _ = pipe.samplers(**options)
    return base


# ---- inpainting ------------------------------------------------------------------------------

def mask_note(mask):
    fraction = mask.fraction()
    if fraction == 0:
        return "the mask marks no pixel to inpaint: the outputs equal the inputs"
    if fraction == 1:
        return "the mask marks every pixel: this is plain sampling (nothing is kept)"
    return None


def inpaint_job(gs, inputs, mask, method="repaint", jump_length=None, jump_count=None):
    """(EditJob, notes) inpainting inputs where mask (a Mask) says."""
    schedule, notes = inpainting.inpaint_schedule(gs, method, jump_length, jump_count)

    def edit(gs, x0, seeds, kwargs, on_step, inpaint_mask):
        return inpainting.inpaint(gs, x0, inpaint_mask, seeds, kwargs, schedule, on_step)
    job = EditJob(gs, inputs.images, inputs.seeds, edit, denoising_steps(schedule),
                  {"inpaint_mask": mask.inpaint})
    return job, notes + [n for n in (mask.note, mask_note(mask)) if n]


def inpaint(pipe, images, mask, seeds=None, class_labels=None, *, method="repaint",
            jump_length=None, jump_count=None, mask_threshold=None, invert_mask=False,
            batch_size=64, progress=True, output_type="np", cache=None, **options):
    """Generate the masked pixels (mask: white / True = inpaint) of each image; see
    inpainting.py for method "replace" (the baseline) and "repaint" (jump_length, jump_count;
    RePaint's 10 and 9 by default, the length shortened to fit fewer steps)."""
    gs = _guided(pipe, options)
    inputs = prepare_inputs(gs, images, seeds, class_labels)
    m = read_mask(mask, inputs.images.shape[-1], len(inputs.images), mask_threshold,
                  invert_mask, option="mask")
    job, notes = inpaint_job(gs, inputs, m, method, jump_length, jump_count)
    return _run(job, inputs, pipe.device, batch_size, progress, cache,
                pipe.notes + gs.notes + notes, output_type=output_type)


# ---- img2img ---------------------------------------------------------------------------------

def img2img_job(gs, inputs, strength):
    steps = sdedit.img2img_steps(gs, strength)

    def edit(gs, x0, seeds, kwargs, on_step):
        return sdedit.img2img(gs, x0, strength, seeds, kwargs, on_step)
    return EditJob(gs, inputs.images, inputs.seeds, edit, steps)


def img2img(pipe, images, strength=0.5, seeds=None, class_labels=None, *, batch_size=64,
            progress=True, output_type="np", cache=None, **options):
    """SDEdit: each image noised to strength·T, then sampled (sdedit.py)."""
    gs = _guided(pipe, options)
    sdedit.img2img_steps(gs, strength)  # a bad strength before the images are read
    inputs = prepare_inputs(gs, images, seeds, class_labels)
    return _run(img2img_job(gs, inputs, strength), inputs, pipe.device, batch_size, progress,
                cache, pipe.notes + gs.notes, output_type=output_type)


# ---- inversion -------------------------------------------------------------------------------

@dataclasses.dataclass
class InversionOutput:
    latents: torch.Tensor   # float32 [N, C, H, W]: the sampler's starting noise for each image
    labels: object          # int64 array or None, one per image
    seeds: list             # what decode() samples back with (their noise is unused by ddim
                            # with η = 0, euler and heun)
    reconstructions: object  # uint8 NHWC of decode(latents), or None
    rmse: object            # per image √mean((reconstruction − input)²) in [−1, 1] units
    notes: list


def invert_images(gs, inputs, device, batch_size=64, progress=True):
    """The latents of inputs.images (float32 [N, C, H, W] on the CPU)."""
    from tqdm.auto import tqdm
    inversion.check_invertible(gs)
    parts = []
    total = len(inputs.seeds) * inversion.inversion_steps(gs)
    with tqdm(total=total, desc="invert", unit="step", disable=not progress) as bar:
        for lo in range(0, len(inputs.seeds), batch_size):
            x0 = inputs.images[lo:lo + batch_size].to(device)
            labels = None if inputs.labels is None else inputs.labels[lo:lo + batch_size]
            with torch.no_grad():
                parts.append(inversion.invert(gs, x0, model_kwargs(labels, device),
                                              lambda: bar.update(len(x0))).cpu())
    return torch.cat(parts)


def invert(pipe, images, class_labels=None, *, reconstruct=True, batch_size=64,
           progress=True, **options):
    """DDIM / probability-flow inversion of each image (inversion.py), and with reconstruct
    its reconstruction by sampling back with the same steps."""
    gs = _guided(pipe, options)
    inversion.check_invertible(gs)
    inputs = prepare_inputs(gs, images, None, class_labels)
    latents = invert_images(gs, inputs, pipe.device, batch_size, progress)
    labels = None if inputs.labels is None else np.asarray(inputs.labels, dtype=np.int64)
    out = InversionOutput(latents, labels, inputs.seeds, None, None, pipe.notes + gs.notes)
    if reconstruct:
        job, decoded = decode_job(gs, latents, inputs.seeds, labels)
        out.reconstructions = _run(job, decoded, pipe.device, batch_size, progress).images
        out.rmse = rmse(out.reconstructions, float_to_uint8(inputs.images).numpy())
    return out


def rmse(a_uint8, b_uint8):
    """Per image √mean((a − b)²), both in [−1, 1] units."""
    a = a_uint8.astype(np.float64) / 127.5
    b = b_uint8.astype(np.float64) / 127.5
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def decode_job(gs, latents, seeds=None, labels=None):
    """(EditJob, EditInputs) sampling back from latents."""
    latents = torch.as_tensor(latents, dtype=torch.float32)
    if latents.dim() != 4 or tuple(latents.shape[1:]) != tuple(gs.image_shape()):
        raise InputError(f"latents must be [N, {', '.join(map(str, gs.image_shape()))}], got "
                         f"{list(latents.shape)}")
    seeds = check_seeds(range(len(latents)) if seeds is None else seeds)
    labels = None if labels is None else np.asarray(labels).reshape(-1).tolist()
    inputs = EditInputs(latents, seeds, output_labels(gs, labels, None, len(seeds)), [])

    def edit(gs, x0, seeds, kwargs, on_step):
        return inversion.decode(gs, x0, seeds, kwargs, on_step)
    return EditJob(gs, latents, seeds, edit, gs.num_steps), inputs


def decode(pipe, latents, labels=None, seeds=None, *, batch_size=64, progress=True,
           output_type="np", **options):
    """Sample back from latents (invert's) with the sampler and steps they were made with."""
    gs = _guided(pipe, options)
    job, inputs = decode_job(gs, latents, seeds, labels)
    return _run(job, inputs, pipe.device, batch_size, progress, output_type=output_type)


# ---- super-resolution ------------------------------------------------------------------------

def load_upsampler(spec, device="cpu", dtype=None, noise_schedule=None, diffusion_steps=None,
                   image_size=None, low_res_size=None, model_options=None, option="upsampler",
                   flag_prefix="--"):
    """(loaded model, its DiffusionSettings, low-resolution size, notes)."""
    loaded = load_model(spec, "upsampler", device=device, dtype=dtype, option=option,
                        image_size=image_size, **(model_options or {}))
    settings = resolve_diffusion(loaded.model, loaded.info, f"{option} {loaded.origin}",
                                 noise_schedule, diffusion_steps, flag_prefix=flag_prefix)
    size, note = expected_low_res_size(loaded, low_res_size)
    return loaded, settings, size, [*settings.notes, *([note] if note else [])]


def upsample(upsampler, base_samples, seeds=None, class_labels=None, *, device="cpu",
             dtype=None, noise_schedule=None, diffusion_steps=None, low_res_size=None,
             image_size=None, model_options=None, batch_size=64, progress=True,
             output_type="np", cache=None, **options):
    """Super-resolve given low-resolution images (guided-diffusion's super_res_sample.py with
    --base_samples): upsampler is a checkpoint, shipped name or preset of a super-resolution
    UNet. Image k's noise comes from seeds[k] as in a two-stage `fastguide sample` run, so
    upsampling that run's base samples with its seeds gives its upsampled images."""
    loaded, settings, size, notes = load_upsampler(
        upsampler, device, dtype, noise_schedule, diffusion_steps, image_size, low_res_size,
        model_options)
    gs = GuidedSampler(loaded.model, settings, **options)
    inputs = prepare_inputs(gs, base_samples, seeds, class_labels, "base_samples", size=size,
                            what=f"the upsampler ({size}px -> {gs.image_shape()[1]}px)")
    job = EditJob(None, inputs.images, inputs.seeds, given_images, 0)
    return _run(job, inputs, device, batch_size, progress, cache, notes + gs.notes,
                upsampler=gs, output_type=output_type)
