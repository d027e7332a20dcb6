"""`fastguide train`: options -> checks (before any work) -> data set, model, diffusion ->
Trainer.run()."""
import argparse
import os
import pathlib
import sys

import torch

from ..cli import CLIError
from ..diffusion import create_gaussian_diffusion
from . import distributed as dist_util
from .arch import GD_FLAGS, UNSHAPED_FLAGS, arch_names, build_arch, flag_overrides
from .checkpoint import CHECKPOINT_NAME
from .data import load_dataset
from .finetune import init_diffusion_info, load_init
from .options import check_range, use_help_formatter
from .trainer import TrainOptions, Trainer, run_files

__all__ = ["add_arguments", "main", "build_trainer", "check_options", "diffusion_from_info"]

EXAMPLES = """\
examples:
  # the shipped digits UNet (docs/training.md lists the commands of all three shipped models)
  fastguide train --arch digits_unet --data digits --p-uncond 0.1 --steps 1500 --lr 5e-4 \\
      --ema 0.995,0.998 --precision fp32 --run-dir runs/digits_unet
  # fine-tune guided-diffusion's 64x64 model on labelled images, adding classifier-free guidance
  fastguide train --init 64x64_diffusion.pt --data images.npz --noise-schedule cosine \\
      --p-uncond 0.1 --lr 1e-5 --lr-warmup-steps 500 --random-flip --batch-size 64 \\
      --microbatch 8 --run-dir runs/ft64
  # a UNet of your own, with guided-diffusion's model flags
  fastguide train --arch custom --image-size 32 --num-channels 64 --attention-resolutions 16,8 \\
      --learn-sigma --data images/ --run-dir runs/custom32
  # continue a stopped run: the same command plus --resume (a larger --steps trains longer)
  fastguide train ... --resume
  # on 8 GPUs
  torchrun --nproc_per_node 8 -m fastguide train ...

A run directory holds one run: an earlier run there is continued with --resume or replaced with
--overwrite, never silently mixed with a new one. See docs/training.md.
"""


def _rates(text):
    try:
        return tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_model_arguments(p):
    g = p.add_argument_group("what to train")
    g.add_argument("--task", choices=["diffusion", "classifier"], default="diffusion",
                   help="a diffusion model, or a classifier for classifier guidance")
    g.add_argument("--arch", default=None,
                   help=f"architecture (default: digits_unet, or digits_classifier for --task "
                        f"classifier; custom = guided-diffusion's model_and_diffusion_defaults()): "
                        f"{', '.join(arch_names())}")
    g.add_argument("--init", metavar="CKPT", default=None,
                   help="fine-tune this checkpoint (guided-diffusion .pt or fastguide "
                        ".safetensors) instead of a new model; excludes --arch")
    g.add_argument("--init-ema", metavar="CKPT", default=None,
                   help="start every EMA from this checkpoint (default: from --init)")
    g.add_argument("--null-class", action=argparse.BooleanOptionalAction, default=None,
                   help="give the model the CFG null label (default: when --p-uncond > 0)")
    g.add_argument("--null-init", choices=["zero", "mean"], default=None,
                   help="when --init gets a null class it lacks: its embedding row starts at "
                        "zero or at the mean of the class rows (default: zero)")
    g = p.add_argument_group("architecture: guided-diffusion's model flags, changing --arch "
                             "(or, with --init, checked against the checkpoint)")
    for flag, (_, meaning) in GD_FLAGS.items():
        name = "--" + flag.replace("_", "-")
        if flag in ("class_cond", "use_checkpoint", "use_scale_shift_norm", "resblock_updown",
                    "use_new_attention_order", "learn_sigma"):
            g.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=meaning)
        else:
            kind = {"attention_resolutions": str, "channel_mult": str, "dropout": float}
            g.add_argument(name, type=kind.get(flag, int), default=None, help=meaning)


def _add_data_arguments(p):
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits",
                   help="'digits' (sklearn load_digits, 8x8, train split), a .npz (arr_0 uint8 "
                        "NHWC, arr_1 labels) or an image folder")
    g.add_argument("--resolution", type=int, default=None,
                   help="image folder: resize and centre-crop size (default: --image-size, or "
                        "the --init model's)")
    g.add_argument("--class-from", choices=["subfolder", "prefix", "none"], default=None,
                   help="image folder: class from the sub-folder or the file-name prefix up to "
                        "'_' (guided-diffusion's) (default: subfolder)")
    g.add_argument("--channels", type=int, default=None, choices=[1, 3],
                   help="image folder: 1 (grey) or 3 (RGB) (default: 3)")
    g.add_argument("--random-flip", action="store_true",
                   help="mirror each image left-right with probability 1/2 (guided-diffusion "
                        "flips by default; off here because digits are not mirror-symmetric)")


def _add_process_arguments(p):
    g = p.add_argument_group("diffusion")
    g.add_argument("--diffusion-steps", type=int, default=None,
                   help="T of the process (default: 1000, or the --init model's .train.json)")
    g.add_argument("--noise-schedule", default=None, choices=["linear", "cosine"],
                   help="beta schedule (default: cosine, or the --init model's .train.json; "
                        "required for an --init without one)")
    g.add_argument("--schedule-sampler", default="uniform",
                   choices=["uniform", "loss-second-moment"],
                   help="how t is drawn: uniformly, or by importance (improved DDPM)")
    g.add_argument("--p-uncond", type=float, default=0.0,
                   help="classifier-free guidance: probability of replacing a label by the null "
                        "label, in [0, 1)")
    g.add_argument("--low-res-size", type=int, default=0,
                   help="super-resolution (--arch upsampler*): train on images area-resized to "
                        "this size as low_res, as guided-diffusion's super_res_train (0: off)")
    g.add_argument("--noised", action=argparse.BooleanOptionalAction, default=None,
                   help="classifier: train on noised x_t at random t (guided-diffusion's "
                        "--noised) (default: on)")


def _add_optimisation_arguments(p):
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="optimizer steps in all")
    g.add_argument("--batch-size", type=int, default=64, help="global batch over all ranks")
    g.add_argument("--microbatch", type=int, default=0,
                   help="per-rank forward size, for gradient accumulation (0: no split)")
    g.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    g.add_argument("--lr-warmup-steps", type=int, default=0,
                   help="linear warm-up over this many steps (0: none)")
    g.add_argument("--lr-anneal-steps", type=int, default=0,
                   help="guided-diffusion's lr_anneal_steps: lr·(1 − step/N), N >= --steps "
                        "(0: constant)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--ema", type=_rates, default=(0.9999,),
                   help="EMA rates, comma-separated, each in [0, 1)")
    g.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="autocast dtype; fp16 adds dynamic loss scaling; fp32 is much faster "
                        "on CPUs without native bf16")
    g.add_argument("--grad-clip", type=float, default=0.0,
                   help="clip the global gradient norm to this (0: no clipping)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights and every step's batch, in [0, 2^32)")


def _add_run_arguments(p):
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", required=True,
                   help="directory for checkpoint.pt, log.jsonl and the exported models")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its checkpoint.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's files in --run-dir and start afresh")
    g.add_argument("--log-every", type=int, default=50, help="steps per log.jsonl row")
    g.add_argument("--save-every", type=int, default=500,
                   help="steps per checkpoint and model export")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--device", default=None,
                   help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")


def add_arguments(p):
    use_help_formatter(p, "Train a diffusion model or a (noisy) classifier, or fine-tune a "
                          "released checkpoint,\non one process or under torchrun.", EXAMPLES)
    _add_model_arguments(p)
    _add_data_arguments(p)
    _add_process_arguments(p)
    _add_optimisation_arguments(p)
    _add_run_arguments(p)


# ---- checks before any work ------------------------------------------------------------------

_POSITIVE_INTS = ("steps", "batch_size", "log_every", "save_every", "diffusion_steps",
                  "resolution", "image_size", "num_channels", "num_res_blocks")
_NON_NEGATIVE_INTS = ("microbatch", "low_res_size", "lr_warmup_steps", "lr_anneal_steps")


def _option(dest):
    return "--" + dest.replace("_", "-")


def check_options(args):
    """Every option's value, and the run directory, before anything is loaded or built."""
    for dest in _POSITIVE_INTS:
        if getattr(args, dest) is not None:
            check_range(getattr(args, dest), _option(dest), low=1)
    for dest in _NON_NEGATIVE_INTS:
        check_range(getattr(args, dest), _option(dest), low=0)
    check_range(args.lr, "--lr", low=0, low_open=True)
    check_range(args.weight_decay, "--weight-decay", low=0)
    check_range(args.grad_clip, "--grad-clip", low=0)
    check_range(args.p_uncond, "--p-uncond", low=0, high=1, high_open=True)
    check_range(args.seed, "--seed", low=0, high=2 ** 32, high_open=True)
    for rate in args.ema:
        check_range(rate, "--ema (each rate)", low=0, high=1, high_open=True)
    if args.dropout is not None:
        check_range(args.dropout, "--dropout", low=0, high=1, high_open=True)
    for dest in ("num_heads", "num_heads_upsample", "num_head_channels"):
        value = getattr(args, dest)
        if value is not None and value != -1 and value < 1:
            raise CLIError(f"{_option(dest)} must be >= 1 or -1, got {value}")
    if args.lr_anneal_steps and args.lr_anneal_steps < args.steps:
        raise CLIError(f"--lr-anneal-steps {args.lr_anneal_steps} < --steps {args.steps}: the "
                       "learning rate would reach zero and turn negative")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.batch_size % world:
        raise CLIError(f"--batch-size {args.batch_size} is not divisible by the {world} ranks")
    _check_applicability(args)
    _check_paths(args)
    _check_device(args.device)


def _given(args, *dests):
    return [_option(d) for d in dests if getattr(args, d) not in (None, False)]


def _check_applicability(args):
    """Options that do not apply to this command are errors, not silently dropped."""
    if args.task == "classifier":
        bad = _given(args, "class_cond", "learn_sigma", "num_heads_upsample", "null_class",
                     "null_init") + (["--p-uncond"] if args.p_uncond else [])
        if bad:
            raise CLIError(f"{', '.join(bad)} applies to --task diffusion only")
    elif args.noised is not None:
        raise CLIError("--noised / --no-noised applies to --task classifier only")
    if args.init:
        if args.arch:
            raise CLIError("--arch does not apply with --init: the checkpoint is the architecture "
                           "(use the model flags to set what its state dict cannot tell)")
    elif args.init_ema or args.null_init:
        raise CLIError(f"{_given(args, 'init_ema', 'null_init')[0]} applies only with --init")
    if args.null_class is False and args.p_uncond:
        raise CLIError("--p-uncond > 0 needs the null class; drop --no-null-class")
    if args.data.startswith("digits") or args.data.endswith(".npz"):
        bad = _given(args, "resolution", "class_from", "channels")
        if bad:
            raise CLIError(f"{', '.join(bad)} applies to image folders, not --data {args.data}")


def _check_paths(args):
    run_dir = pathlib.Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CLIError(f"--run-dir {run_dir} is a file, not a directory")
    earlier = run_files(run_dir)
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite contradict each other; choose one")
    if args.resume and not (run_dir / CHECKPOINT_NAME).exists():
        raise CLIError(f"--resume: {run_dir / CHECKPOINT_NAME} does not exist, so there is no run "
                       "to continue; drop --resume to start one")
    if earlier and not (args.resume or args.overwrite):
        names = ", ".join(p.name for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise CLIError(f"--run-dir {run_dir} holds an earlier run ({names}); pass --resume to "
                       "continue it or --overwrite to replace it")
    for flag in ("init", "init_ema"):
        path = getattr(args, flag)
        if path and not pathlib.Path(path).is_file():
            raise CLIError(f"{_option(flag)} {path} does not exist")
    if args.init and not args.noise_schedule and init_diffusion_info(args.init) is None:
        raise CLIError(f"--init {args.init} has no .train.json beside it, so the process it "
                       "was trained with is unknown: pass --noise-schedule (guided-diffusion's "
                       "released models: linear, except 64x64_diffusion: cosine; 1000 steps)")


def _check_device(device):
    if device is None:
        return
    try:
        d = torch.device(device)
    except RuntimeError:
        raise CLIError(
            f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine")


# ---- building ------------------------------------------------------------------------------------

def diffusion_from_info(info):
    """The training process described by a model's .train.json 'diffusion' entry."""
    d = info["diffusion"]
    return create_gaussian_diffusion(steps=d["steps"], noise_schedule=d["noise_schedule"],
                                     learn_sigma=d["learn_sigma"])


def _source(args):
    return f"--init {args.init}" if args.init else f"--arch {args.arch}"


def _check_fit(model, dataset, args):
    """The model suits the task and the data."""
    cfg, source = model.config, _source(args)
    if (cfg["kind"] == "classifier") != (args.task == "classifier"):
        raise ValueError(f"{source} is a {cfg['kind']} model, not one for --task {args.task}")
    if (cfg["kind"] == "superres") != bool(args.low_res_size):
        raise ValueError(f"--low-res-size is for (and required by) super-resolution models; "
                         f"{source} is a {cfg['kind']} model")
    c, h, w = dataset.image_shape
    if cfg["in_channels"] != c:
        raise ValueError(f"{source} takes {cfg['in_channels']}-channel images but --data "
                         f"{args.data} has {c} channels (see --channels)")
    if cfg.get("image_size") not in (None, h) or h != w:
        raise ValueError(f"{source} is built for {cfg['image_size']}px square images but --data "
                         f"{args.data} has {h}x{w} (see --resolution)")
    factor = 2 ** (len(cfg["channel_mult"]) - 1)
    if h % factor:
        raise ValueError(f"{source} downsamples by {factor}, which does not divide the {h}px "
                         f"images of --data {args.data} (see --resolution)")
    if cfg.get("image_size") is None:  # a guided-diffusion .pt of no released architecture
        print(f"note: {source} does not record its image size; training it, and exporting it, "
              f"at {h}px (the size of --data)", file=sys.stderr)
        cfg["image_size"] = h


def _fit_labels(model, dataset, args):
    """The data's labels against the model's classes (a checkpoint's are fixed)."""
    cfg = model.config
    k = cfg["out_channels"] if cfg["kind"] == "classifier" else cfg.get("num_classes")
    if k is None:
        if dataset.num_classes is not None:
            print(f"note: {_source(args)} is unconditional: the labels of --data {args.data} "
                  "are not used", file=sys.stderr)
            dataset.y, dataset.num_classes = None, None
        return
    if dataset.y is None:
        raise ValueError(f"{_source(args)} is class-conditional ({k} classes) but --data "
                         f"{args.data} has no labels")
    if dataset.num_classes > k:
        raise ValueError(f"--data {args.data} has {dataset.num_classes} classes but "
                         f"{_source(args)} has {k}")


def _given_flags(args):
    return {f: getattr(args, f) for f in GD_FLAGS if getattr(args, f) is not None}


def _check_init_flags(model, given, args):
    """Flags that change shapes must agree with the checkpoint's config."""
    cfg = model.config
    shaped = {f: v for f, v in given.items() if f not in UNSHAPED_FLAGS and f != "class_cond"}
    for flag, value in flag_overrides(shaped, cfg.get("image_size"), cfg["in_channels"]).items():
        name = next(f for f in shaped if GD_FLAGS[f][0] == flag)
        have = tuple(cfg[flag]) if isinstance(value, tuple) else cfg[flag]
        if have != value:
            raise ValueError(f"{_flag_text(name, given[name])} does not match {_source(args)}, "
                             f"whose {flag} is {cfg[flag]}")
    conditional = cfg.get("num_classes") is not None
    if given.get("class_cond", conditional) != conditional:
        raise ValueError(f"{_flag_text('class_cond', given['class_cond'])} does not match "
                         f"{_source(args)}, which is "
                         f"{'class-conditional' if conditional else 'unconditional'}")


def _flag_text(flag, value):
    """How the user wrote it: --learn-sigma / --no-learn-sigma / --num-channels 64."""
    name = flag.replace("_", "-")
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{name}"
    return f"--{name} {value}"


def _load_data(args, image_size):
    class_from = {None: "subfolder", "none": None}.get(args.class_from, args.class_from)
    return load_dataset(args.data, args.resolution or image_size, class_from, args.channels or 3)


def _fine_tune_model(args, given):
    """(model, EMA start or None, dataset, whether a null class was added) for --init."""
    overrides = {GD_FLAGS[f][0]: v for f, v in given.items() if f in UNSHAPED_FLAGS}
    null_class = args.task == "diffusion" and (args.p_uncond > 0 if args.null_class is None
                                               else args.null_class)
    model, added = load_init(args.init, overrides, null_class, args.null_init)
    _check_init_flags(model, given, args)
    ema_init = None
    if args.init_ema:
        ema_init, _ = load_init(args.init_ema, overrides, null_class, args.null_init,
                                what="--init-ema")
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in ema_init.state_dict().items()}
        if ours != theirs:
            diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            raise ValueError(f"--init-ema {args.init_ema} is another architecture than --init "
                             f"{args.init}: {len(diff)} tensors differ, e.g. {diff[:3]}")
    dataset = _load_data(args, model.config.get("image_size"))
    _fit_labels(model, dataset, args)
    return model, ema_init, dataset, added


def _new_model(args, given):
    """(model, dataset) for a new model of --arch changed by the model flags."""
    if args.arch is None:
        args.arch = "digits_classifier" if args.task == "classifier" else "digits_unet"
    dataset = _load_data(args, given.get("image_size"))
    kw = {}
    if args.arch == "custom":
        kw["in_channels"] = dataset.image_shape[0]
    if args.task == "classifier":
        if dataset.num_classes is None:
            raise ValueError(f"--task classifier needs labelled --data; {args.data} has no labels")
        kw["num_classes" if args.arch == "digits_classifier" else "out_channels"] = \
            dataset.num_classes
    else:
        conditional = (dataset.num_classes is not None if args.class_cond is None
                       else args.class_cond)
        if conditional and dataset.num_classes is None:
            raise ValueError(f"--class-cond needs labelled --data; {args.data} has no labels")
        if not conditional and dataset.num_classes is not None:
            dataset.y, dataset.num_classes = None, None  # --no-class-cond: labels unused
        kw["num_classes"] = dataset.num_classes
        kw["null_class"] = conditional and (args.p_uncond > 0 if args.null_class is None
                                            else args.null_class)
    base = build_arch(args.arch, meta=True, **kw).config
    kw.update(flag_overrides(given, base.get("image_size"), base["in_channels"]))
    try:
        build_arch(args.arch, meta=True, **kw)
    except (ValueError, TypeError) as e:  # e.g. channels that GroupNorm(32) cannot split
        flags = " ".join(_flag_text(f, v) for f, v in given.items())
        raise ValueError(f"--arch {args.arch} {flags} cannot be built: {e}") from None
    torch.manual_seed(args.seed)  # the initial weights
    return build_arch(args.arch, **kw), dataset


def _diffusion_info(args, model):
    learn_sigma = bool(getattr(model, "learn_sigma", False))
    saved = init_diffusion_info(args.init) if args.init else None
    steps = args.diffusion_steps or (saved["steps"] if saved else 1000)
    schedule = args.noise_schedule or (saved["noise_schedule"] if saved else None)
    info = {"steps": steps, "noise_schedule": schedule or "cosine", "learn_sigma": learn_sigma}
    if saved and (saved["steps"], saved["noise_schedule"]) != (steps, info["noise_schedule"]):
        print(f"note: training with {info['noise_schedule']}, {steps} steps; --init was trained "
              f"with {saved['noise_schedule']}, {saved['steps']} steps", file=sys.stderr)
    return info


def build_trainer(args):
    """Data set, model and diffusion from the command's (checked) arguments."""
    device = dist_util.setup(args.device)
    given = _given_flags(args)
    ema_init, added = None, False
    if args.init:
        model, ema_init, dataset, added = _fine_tune_model(args, given)
    else:
        model, dataset = _new_model(args, given)
    _check_fit(model, dataset, args)
    diffusion_info = _diffusion_info(args, model)
    diffusion = diffusion_from_info({"diffusion": diffusion_info})
    options = TrainOptions(
        run_dir=args.run_dir, task=args.task, steps=args.steps, batch_size=args.batch_size,
        microbatch=args.microbatch, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        lr_anneal_steps=args.lr_anneal_steps, weight_decay=args.weight_decay,
        ema_rates=args.ema, precision=args.precision, grad_clip=args.grad_clip,
        p_uncond=args.p_uncond, noised=args.noised is not False,
        low_res_size=args.low_res_size, random_flip=args.random_flip,
        schedule_sampler=args.schedule_sampler, seed=args.seed, log_every=args.log_every,
        save_every=args.save_every, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress)
    # Bit-reproducible given the same torch build, device and thread count (float reduction
    # order depends on the thread count), so those are recorded with the command.
    info = {"diffusion": diffusion_info, "data": args.data, "world_size": dist_util.world_size(),
            "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "command": "fastguide train " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    if args.init:
        info.update(init=str(args.init), init_ema=args.init_ema, null_class_added=added)
    return Trainer(model, dataset, diffusion, options, device=device, extra_info=info,
                   ema_init=ema_init)


def main(args):
    check_options(args)
    try:
        trainer = build_trainer(args)
    except (ValueError, FileExistsError) as e:  # bad arguments or data: a message
        raise CLIError(str(e)) from None
    if trainer.step >= args.steps:
        print(f"{args.run_dir} is already finished: its checkpoint is at step {trainer.step} of "
              f"--steps {args.steps}; nothing to do (a larger --steps trains further)")
        dist_util.cleanup()
        return trainer
    row = trainer.run()
    if dist_util.is_main() and row is not None:
        print(f"step {trainer.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                   if k in ("loss", "mse", "accuracy")))
        print(f"cpu time {trainer.cpu_seconds:.0f} s; models in {args.run_dir}")
    dist_util.cleanup()
    if trainer.stopped_by:
        print(f"stopped by {trainer.stopped_by} after step {trainer.step}, checkpoint written; "
              f"continue with the same command plus --resume", file=sys.stderr)
        raise SystemExit(130)
    return trainer
