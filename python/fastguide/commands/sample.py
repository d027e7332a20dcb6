"""`fastguide sample`: seeds -> images with any sampler and guidance, on one process or under
torchrun; a thin layer over fastguide.pipeline.ADMPipeline.

Everything is validated before sampling starts: the seeds, every number, the models' kinds and
sizes, the options' fit to the chosen sampler, the output directory. Finished batches are kept
in OUT/.partial until the outputs are written, so a killed run resumes where it stopped.
"""
import argparse
import sys
import time

from ..cliutil import (CLIError, finite_float, nonnegative_float, parse_int_ranges,
                       positive_float, positive_int, resolve_device, unit_interval, warn)
from ..pipeline import (ADMPipeline, BatchCache, ModelSpecError, NOISE_SCHEDULES,
                        NonFiniteSamples, OptionError, OutputDir, generate, labels_for,
                        sampler_names, saturated_fraction, settings_key)
from ..pipeline.guided import DISCRETE_SAMPLERS, sigma_options
from ..sampling.guidance_scale import RAMPS
from ..train import distributed as dist_util

__all__ = ["add_arguments", "main", "EXAMPLES"]

EXAMPLES = """examples:
  fastguide sample --model digits_unet --cfg-scale 2 --seeds 0-99 --per-seed-png --png-scale 8
  fastguide sample --model 256x256_diffusion.pt --classifier 256x256_classifier.pt \\
      --classifier-scale 1.0 --sampler ddpm --steps 250 --seeds 0-63 --batch-size 16
  fastguide sample --model 64x64_diffusion.pt --upsampler 64_256_upsampler.pt --seeds 0-15
  fastguide sample --model digits_unet --sampler dpmpp_2m --steps 20 --cfg-scale 3 \\
      --guidance-interval 0.2,10 --clip-denoised
  torchrun --nproc_per_node 8 -m fastguide sample --model 256x256_diffusion.pt ...
"""

# CLI flag (dest) -> the sampler option names it may set (the first a sampler accepts wins).
_SAMPLER_FLAGS = {"eta": ("eta",), "churn": ("S_churn", "s_churn"), "s_min": ("S_min", "s_tmin"),
                  "s_max": ("S_max", "s_tmax"), "s_noise": ("S_noise", "s_noise"),
                  "solver_type": ("solver_type",), "order": ("order",)}
_FLAG_OF = {"S_churn": "--churn", "s_churn": "--churn", "S_min": "--s-min", "s_tmin": "--s-min",
            "S_max": "--s-max", "s_tmax": "--s-max", "S_noise": "--s-noise"}


def _interval(text):
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected SIGMA_LO,SIGMA_HI, got {text!r}")
    lo, hi = (nonnegative_float(p) if p.strip() != "inf" else float("inf") for p in parts)
    if lo > hi:
        raise argparse.ArgumentTypeError(f"needs SIGMA_LO <= SIGMA_HI, got {text!r}")
    return lo, hi


def _percentile(text):
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a percentile in (0, 1], got {text!r}")
    return value


def _add_shape_arguments(p, prefix, what):
    """What a guided-diffusion .pt state dict cannot tell (its script flags)."""
    g = p.add_argument_group(f"{what}: flags a guided-diffusion .pt does not record")
    g.add_argument(f"--{prefix}image-size", type=positive_int, metavar="PX",
                   help=f"{what}'s image size (needed for custom architectures)")
    g.add_argument(f"--{prefix}num-heads", type=positive_int, metavar="N",
                   help=f"{what}'s attention heads")
    g.add_argument(f"--{prefix}num-head-channels", type=positive_int, metavar="N",
                   help=f"{what}'s channels per attention head (overrides --{prefix}num-heads)")


def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    p.add_argument("--model", required=True,
                   help="a checkpoint (guided-diffusion .pt or fastguide .safetensors), a shipped "
                        "model (digits_unet) or a preset name (random weights, for timing)")
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --out (they are removed first)")
    p.add_argument("--seeds", default="0-63", help="seeds, one image each: e.g. 0-63,100")
    p.add_argument("--class-labels", help="labels cycled over the seeds, e.g. 0-9 or 3,3,7 "
                                          "(default: seed mod number of classes)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch, per rank")
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", default="ddim", choices=sampler_names(),
                   help="ddpm/ddim: guided-diffusion's loops on the respaced process; the rest "
                        "run on the network seen as an EDM denoiser over a σ schedule")
    g.add_argument("--steps", type=positive_int, default=50, help="sampling steps")
    g.add_argument("--schedule", default=None,
                   help="σ schedule of the σ-samplers: karras (default), exponential, "
                        "polyexponential, vp, discrete (the model's own σ levels)")
    g.add_argument("--rho", type=positive_float, default=None,
                   help="ρ of the karras / polyexponential schedule (default 7)")
    g.add_argument("--eta", type=nonnegative_float, default=None,
                   help="noise of the ancestral / SDE samplers and of ddim (ddim default 0, "
                        "the others 1)")
    g.add_argument("--churn", type=nonnegative_float, default=None,
                   help="heun/euler: EDM's S_churn (default 0: deterministic)")
    g.add_argument("--s-min", type=nonnegative_float, default=None,
                   help="heun/euler: churn only for σ >= this (default 0)")
    g.add_argument("--s-max", type=nonnegative_float, default=None,
                   help="heun/euler: churn only for σ <= this (default inf)")
    g.add_argument("--s-noise", type=nonnegative_float, default=None,
                   help="noise scale S_noise of churn / ancestral steps (default 1)")
    g.add_argument("--solver-type", default=None, choices=["midpoint", "heun"],
                   help="dpmpp_2m_sde's second-order rule")
    g.add_argument("--order", type=positive_int, default=None, help="unipc / lms order")
    g.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=True,
                   help="clamp every x0 prediction to [-1, 1] (guided-diffusion's default; "
                        "for every sampler)")
    g = p.add_argument_group("guidance")
    g.add_argument("--cfg-scale", type=nonnegative_float, default=0.0,
                   help="classifier-free guidance w: (1+w)·ε(c) − w·ε(∅) (diffusers' "
                        "guidance_scale − 1); needs a null-class model")
    g.add_argument("--cfg-rescale", type=unit_interval, default=0.0,
                   help="rescale φ of the CFG output (Lin et al. 2024)")
    g.add_argument("--classifier", help="noisy classifier: checkpoint or shipped model name")
    g.add_argument("--classifier-scale", type=nonnegative_float, default=None,
                   help="classifier guidance scale s (default 1.0 when --classifier is given)")
    g.add_argument("--weak-model", help="autoguidance: a weaker version of the model")
    g.add_argument("--autoguidance-scale", type=nonnegative_float, default=0.0,
                   help="autoguidance w: D + w·(D − D_weak) (Karras et al. 2024)")
    g.add_argument("--guidance-interval", type=_interval, default=None, metavar="LO,HI",
                   help="apply guidance only for σ in [LO, HI] (Kynkäänniemi et al. 2024)")
    g.add_argument("--guidance-schedule", choices=list(RAMPS), default=None,
                   help="w as a function of σ (constant by default)")
    g.add_argument("--dynamic-threshold", type=_percentile, default=None, metavar="P",
                   help="Imagen's dynamic thresholding of x0 at percentile P (e.g. 0.995)")
    g.add_argument("--unconditional", action="store_true",
                   help="run the model on its null label; labels go to the classifier only")
    g = p.add_argument_group("diffusion process (default: the model's training record, else "
                             "the released model's, else linear 1000)")
    g.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, help="the model's β schedule")
    g.add_argument("--diffusion-steps", type=positive_int, help="the model's T")
    g = p.add_argument_group("two stages: ADM-G + ADM-U")
    g.add_argument("--upsampler", help="super-resolution model (checkpoint or name)")
    g.add_argument("--upsample-sampler", default=None, choices=sampler_names(),
                   help="the upsampler's sampler (default ddim)")
    g.add_argument("--upsample-steps", type=positive_int, default=None,
                   help="the upsampler's steps (default 50)")
    g.add_argument("--upsample-noise-schedule", choices=NOISE_SCHEDULES,
                   help="the upsampler's β schedule (default: its own record / released flags)")
    g.add_argument("--upsample-diffusion-steps", type=positive_int, help="the upsampler's T")
    _add_shape_arguments(p, "", "the model")
    _add_shape_arguments(p, "classifier-", "--classifier")
    _add_shape_arguments(p, "upsample-", "--upsampler")
    p.add_argument("--allow-other-size", action="store_true",
                   help="sample a convolutional model at --image-size other than its own")
    g = p.add_argument_group("output and runtime")
    g.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                   help="write grid.png (one class per column when labels are given)")
    g.add_argument("--per-seed-png", action="store_true", help="write seedNNNNNN.png per seed")
    g.add_argument("--png-scale", type=positive_int, default=1,
                   help="enlarge per-seed PNGs by this factor (nearest neighbour)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="the models' trunk precision (default: the checkpoint's, else float32)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if "
                                                  "available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-resume", action="store_true",
                   help="do not keep finished batches in OUT/.partial (kept by default until "
                        "the outputs are written, so that rerunning a killed run resumes it)")


# ---- arguments -> pipeline options -------------------------------------------------------------

def _flag(option, upsample=False):
    name = _FLAG_OF.get(option, "--" + option.replace("_", "-"))
    if upsample and option in ("steps", "sampler", "image_size"):
        return name.replace("--", "--upsample-", 1)
    return name


def _sampler_options(args):
    """The sampler's own options from the flags the user gave; flags that do not apply to
    --sampler are announced, not silently dropped."""
    if args.sampler in DISCRETE_SAMPLERS:
        accepted = ("eta",) if args.sampler == "ddim" else ()
    else:
        accepted = sigma_options(args.sampler)
    options = {}
    for dest, names in _SAMPLER_FLAGS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        name = next((n for n in names if n in accepted), None)
        if name is None:
            warn(f"--{dest.replace('_', '-')} does not apply to --sampler {args.sampler}; "
                 "ignored")
            continue
        options[name] = value
    return options


def _schedule_options(args):
    sigma = args.sampler not in DISCRETE_SAMPLERS
    if args.sampler == "dpm_solver_fast" and (args.schedule or args.rho is not None):
        warn("dpm_solver_fast chooses its own steps (uniform in log σ between the schedule's "
             "ends): --schedule and --rho change only those ends")
    if args.rho is not None and not sigma:
        warn(f"--rho does not apply to --sampler {args.sampler} (no σ schedule); ignored")
    if args.rho is not None and sigma and (args.schedule or "karras") not in (
            "karras", "polyexponential"):
        warn(f"--rho does not apply to --schedule {args.schedule}; ignored")
        return {}
    return {"rho": args.rho} if args.rho is not None and sigma else {}


def _guidance_options(args):
    return dict(cfg_scale=args.cfg_scale, cfg_rescale=args.cfg_rescale,
                classifier_scale=args.classifier_scale,
                autoguidance_scale=args.autoguidance_scale,
                guidance_interval=args.guidance_interval,
                guidance_schedule=args.guidance_schedule,
                dynamic_threshold=args.dynamic_threshold, unconditional=args.unconditional,
                clip_denoised=args.clip_denoised)


def _shape_options(args, prefix):
    return {k: getattr(args, prefix + k) for k in ("num_heads", "num_head_channels")
            if getattr(args, prefix + k) is not None}


# Options that do not change a batch's images (the batch key holds its seeds and labels).
_NOT_IN_KEY = {"seeds", "class_labels", "out", "overwrite", "batch_size", "grid",
               "per_seed_png", "png_scale", "no_progress", "no_resume", "device", "func",
               "command"}


def _settings(args):
    return {k: v for k, v in vars(args).items() if k not in _NOT_IN_KEY}


def _build(args, device):
    """(pipeline, base sampler, upsampler sampler) with every option checked."""
    pipe = ADMPipeline.from_checkpoint(
        args.model, classifier=args.classifier, weak_model=args.weak_model,
        upsampler=args.upsampler, device=device, dtype=args.dtype,
        noise_schedule=args.noise_schedule, diffusion_steps=args.diffusion_steps,
        upsample_noise_schedule=args.upsample_noise_schedule,
        upsample_diffusion_steps=args.upsample_diffusion_steps, image_size=args.image_size,
        upsample_image_size=args.upsample_image_size, allow_other_size=args.allow_other_size,
        model_options=_shape_options(args, ""),
        classifier_options=_shape_options(args, "classifier_"),
        upsample_options=_shape_options(args, "upsample_"))
    if args.classifier_image_size is not None and pipe.classifier is not None:
        native = pipe.classifier.config.get("image_size")
        if native not in (None, args.classifier_image_size):
            raise CLIError(f"--classifier-image-size {args.classifier_image_size}: the "
                           f"classifier was built for {native}px images")
    try:
        base, up = pipe.samplers(
            args.sampler, args.steps, args.upsample_sampler or "ddim", args.upsample_steps or 50,
            schedule=args.schedule, schedule_options=_schedule_options(args),
            sampler_options=_sampler_options(args), **_guidance_options(args))
    except OptionError as e:
        raise CLIError(f"{_flag(e.option)} {e.detail}") from None
    return pipe, base, up


# flag -> the flag it needs to mean anything
_NEEDS = {"upsample_sampler": "upsampler", "upsample_steps": "upsampler",
          "upsample_noise_schedule": "upsampler", "upsample_diffusion_steps": "upsampler",
          "upsample_image_size": "upsampler", "upsample_num_heads": "upsampler",
          "upsample_num_head_channels": "upsampler", "classifier_image_size": "classifier",
          "classifier_num_heads": "classifier", "classifier_num_head_channels": "classifier",
          "autoguidance_scale": "weak_model"}


def _unused_flags(args):
    for dest, needed in _NEEDS.items():
        if getattr(args, dest) not in (None, 0.0) and getattr(args, needed) is None:
            if dest == "autoguidance_scale":
                raise CLIError("--autoguidance-scale needs --weak-model")
            warn(f"--{dest.replace('_', '-')} has no effect without --{needed.replace('_', '-')}")


def _check_sizes(pipe, base):
    """A classifier must see images of the size being sampled."""
    if pipe.classifier is None:
        return
    size = base.image_shape()[1]
    native = pipe.classifier.config.get("image_size")
    if native is not None and native != size:
        raise CLIError(f"--classifier was built for {native}px images but the model samples "
                       f"{size}px ones")


def _interrupted(cache, out):
    kept = len(list(cache.dir.glob("*.npz"))) if cache is not None and cache.dir.exists() else 0
    where = (f"{kept} finished batches are kept in {cache.dir}; rerun the same command to "
             "resume from them" if cache is not None else
             "nothing was kept (--no-resume); rerun to start again")
    print(f"\nfastguide: interrupted: {where}", file=sys.stderr)
    return 130


def main(args):
    seeds = parse_int_ranges(args.seeds, "--seeds")
    class_labels = (parse_int_ranges(args.class_labels, "--class-labels", high=10 ** 9)
                    if args.class_labels else None)
    device = dist_util.setup(resolve_device(args.device))
    _unused_flags(args)
    try:
        pipe, base, up = _build(args, device)
        _check_sizes(pipe, base)
    except (ModelSpecError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        labels = labels_for(seeds, base.num_classes, class_labels)
    except ValueError as e:
        raise CLIError(f"--class-labels: {e}") from None
    if base.unconditional and pipe.classifier is None:
        labels = None  # the images depend on no label: none are written
    for note in pipe.notes + base.notes + (up.notes if up is not None else []):
        warn(note)
    shape = base.image_shape()
    if up is not None:
        shape = up.image_shape(low_res=True)
    out = OutputDir(args.out, overwrite=args.overwrite)
    planned = out.planned(len(seeds), (shape[1], shape[2], shape[0]),
                          seeds if args.per_seed_png else (), args.grid)
    if dist_util.is_main():
        out.check(planned)
    cache = None if args.no_resume else BatchCache(args.out, settings_key(_settings(args)))
    start = time.perf_counter()
    try:
        images, labels = generate(base, seeds, labels, args.batch_size, device, up,
                                  progress=not args.no_progress, cache=cache)
    except KeyboardInterrupt:
        raise SystemExit(_interrupted(cache, out)) from None
    except NonFiniteSamples as e:
        raise CLIError(str(e)) from None
    if dist_util.is_main():
        removed = out.remove_earlier() if args.overwrite else []
        if removed:
            print(f"removed {len(removed)} files of the earlier run in {args.out}: "
                  f"{', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}")
        written = out.write(images, labels, seeds, args.grid, args.per_seed_png, args.png_scale,
                            settings=_settings(args))
        if cache is not None:
            cache.clear()
        _saturation_warning(images, args)
        print(f"{len(seeds)} images in {time.perf_counter() - start:.1f} s on "
              f"{dist_util.world_size()} rank(s): " + ", ".join(map(str, written[:3]))
              + (f" and {len(written) - 3} more" if len(written) > 3 else ""))
    dist_util.cleanup()


def _saturation_warning(images, args):
    fraction = saturated_fraction(images)
    if fraction > SATURATION_WARNING:
        scales = [f"{flag} {value:g}" for flag, value in
                  (("--cfg-scale", args.cfg_scale), ("--classifier-scale", args.classifier_scale),
                   ("--autoguidance-scale", getattr(args, "autoguidance_scale", None)))
                  if value]
        warn(f"{100 * fraction:.0f}% of the pixel values are saturated (0 or 255): the "
             f"guidance is probably too strong ({', '.join(scales) or 'no guidance scale'}); "
             "try a smaller scale, --dynamic-threshold 0.995 or --cfg-rescale 0.7")


SATURATION_WARNING = 0.75  # digits: 8% at w = 0, 77% at w = 30 unclipped, 97% at w = 200
