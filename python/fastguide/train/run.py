"""`fastguide train`: arguments -> data set, model, diffusion, Trainer.run()."""
import argparse
import sys

import torch

from ..cli import CLIError
from ..diffusion import create_gaussian_diffusion
from . import distributed as dist_util
from .arch import arch_names, build_arch
from .data import load_dataset
from .trainer import TrainOptions, Trainer

__all__ = ["add_arguments", "main", "build_trainer", "diffusion_from_info"]


def _rates(text):
    try:
        return tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p):
    g = p.add_argument_group("what to train")
    g.add_argument("--task", choices=["diffusion", "classifier"], default="diffusion")
    g.add_argument("--arch", default=None,
                   help=f"model architecture (default: digits_unet for --task diffusion, "
                        f"digits_classifier for --task classifier): {', '.join(arch_names())}")
    g.add_argument("--null-class", action=argparse.BooleanOptionalAction, default=None,
                   help="add the CFG null label (default: on when --p-uncond > 0)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits",
                   help="'digits' (sklearn load_digits, 8x8, train split), a .npz (arr_0 uint8 "
                        "NHWC, arr_1 labels) or an image folder")
    g.add_argument("--resolution", type=int, help="image folder: resize and centre-crop size")
    g.add_argument("--class-from", choices=["subfolder", "prefix", "none"], default="subfolder",
                   help="image folder: class from the sub-folder or the file-name prefix")
    g.add_argument("--channels", type=int, default=3, choices=[1, 3])
    g = p.add_argument_group("diffusion")
    g.add_argument("--diffusion-steps", type=int, default=1000)
    g.add_argument("--noise-schedule", default="cosine", choices=["linear", "cosine"])
    g.add_argument("--schedule-sampler", default="uniform",
                   choices=["uniform", "loss-second-moment"])
    g.add_argument("--p-uncond", type=float, default=0.0,
                   help="classifier-free guidance: probability of replacing a label by the null one")
    g.add_argument("--low-res-size", type=int, default=0,
                   help="super-resolution (--arch upsampler*): train on images area-resized to "
                        "this size as low_res, as guided-diffusion's super_res_train")
    g.add_argument("--noised", action=argparse.BooleanOptionalAction, default=True,
                   help="classifier: train on noised x_t at random t (guided-diffusion --noised)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=64, help="global batch over all ranks")
    g.add_argument("--microbatch", type=int, default=0, help="per-rank microbatch (0: no split)")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--ema", type=_rates, default=(0.9999,), help="EMA rates, e.g. 0.999,0.9999")
    g.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="autocast dtype (default bf16); fp16 adds dynamic loss scaling; fp32 is "
                        "much faster on CPUs without native bf16")
    g.add_argument("--grad-clip", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", required=True)
    g.add_argument("--resume", action="store_true", help="continue from run-dir/checkpoint.pt")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--save-every", type=int, default=500)
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")


def diffusion_from_info(info):
    """The training process described by a model's .train.json 'diffusion' entry."""
    d = info["diffusion"]
    return create_gaussian_diffusion(steps=d["steps"], noise_schedule=d["noise_schedule"],
                                     learn_sigma=d["learn_sigma"])


def _check_fit(model, dataset, args):
    """The architecture suits the task and the data."""
    cfg = model.config
    if (cfg["kind"] == "classifier") != (args.task == "classifier"):
        raise ValueError(f"--arch {args.arch} is a {cfg['kind']} model, not one for "
                         f"--task {args.task}")
    if (cfg["kind"] == "superres") != bool(args.low_res_size):
        raise ValueError(f"--low-res-size is for (and required by) super-resolution models; "
                         f"--arch {args.arch} is a {cfg['kind']} model")
    if args.p_uncond and args.task != "diffusion":
        raise ValueError("--p-uncond (CFG label dropout) applies to --task diffusion only")
    c, h, w = dataset.image_shape
    if cfg["in_channels"] != c:
        raise ValueError(f"--arch {args.arch} takes {cfg['in_channels']}-channel images but "
                         f"--data {args.data} has {c} channels (see --channels)")
    if cfg.get("image_size") not in (None, h) or h != w:
        raise ValueError(f"--arch {args.arch} is built for {cfg['image_size']}px square images "
                         f"but --data {args.data} has {h}x{w} (see --resolution)")


def main(args):
    try:
        trainer = build_trainer(args)
    except ValueError as e:  # bad arguments or data: a message, not a traceback
        raise CLIError(str(e)) from None
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


def build_trainer(args):
    """Data set, model and diffusion from the command's arguments."""
    if args.arch is None:
        args.arch = "digits_classifier" if args.task == "classifier" else "digits_unet"
    device = dist_util.setup(args.device)
    class_from = None if args.class_from == "none" else args.class_from
    dataset = load_dataset(args.data, args.resolution, class_from, args.channels)
    kw = {}
    if dataset.num_classes is not None:
        kw["num_classes"] = dataset.num_classes
    if args.task == "diffusion":
        null_class = args.p_uncond > 0 if args.null_class is None else args.null_class
        if kw:
            kw["null_class"] = null_class
    torch.manual_seed(args.seed)  # the initial weights
    model = build_arch(args.arch, **kw)
    _check_fit(model, dataset, args)
    learn_sigma = bool(getattr(model, "learn_sigma", False))
    diffusion_info = {"steps": args.diffusion_steps, "noise_schedule": args.noise_schedule,
                      "learn_sigma": learn_sigma}
    diffusion = diffusion_from_info({"diffusion": diffusion_info})
    options = TrainOptions(
        run_dir=args.run_dir, task=args.task, steps=args.steps, batch_size=args.batch_size,
        microbatch=args.microbatch, lr=args.lr, weight_decay=args.weight_decay,
        ema_rates=args.ema, precision=args.precision, grad_clip=args.grad_clip,
        p_uncond=args.p_uncond, noised=args.noised, low_res_size=args.low_res_size,
        schedule_sampler=args.schedule_sampler,
        seed=args.seed, log_every=args.log_every, save_every=args.save_every,
        resume=args.resume, progress=not args.no_progress)
    # Bit-reproducible given the same torch build, device and thread count (float reduction
    # order depends on the thread count), so those are recorded with the command.
    info = {"diffusion": diffusion_info, "data": args.data, "world_size": dist_util.world_size(),
            "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "command": "fastguide train " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    return Trainer(model, dataset, diffusion, options, device=device, extra_info=info)
