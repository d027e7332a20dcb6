"""`fastguide sample`: seeds -> images, with any sampler and guidance, on one process or torchrun.

Image k depends only on its seed (StackedRandomGenerator) and its label, never on the batch it
was sampled in or on the rank that sampled it, so the output does not depend on --batch-size
or on the number of ranks. Labels: --class-labels gives a list that is cycled over the seeds in
order; without it, seed s gets label s mod num_classes.

Output (rank 0): samples_NxHxWxC.npz in guided-diffusion's format (arr_0 uint8 NHWC images,
arr_1 int64 labels, in seed order), grid.png, and with --per-seed-png one PNG per seed.
"""
import argparse
import json
import math
import pathlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import assets
from ..cli import CLIError
from ..diffusion import ADMDenoiser, create_gaussian_diffusion, edm_sigmas
from ..nn import presets
from ..nn.checkpoint import load_checkpoint
from ..sampling import (ADMClassifierGrad, ClassifierFreeGuidance, ClassifierGuidedDenoiser,
                        StackedRandomGenerator, classifier_cond_fn, ddim_sample_loop,
                        p_sample_loop, rank_batches, sample_euler, sample_heun, without_labels)
from ..train import distributed as dist_util
from ..train.data import float_to_uint8
from .batch_cache import BatchCache, settings_key

__all__ = ["parse_int_ranges", "load_model", "GuidedSampler", "generate", "save_grid", "main",
           "add_arguments", "SAMPLERS"]

SAMPLERS = ("ddim", "ddpm", "heun", "euler")
EDM_DEFAULTS = {"rho": 7.0, "S_churn": 0.0, "S_min": 0.0, "S_max": float("inf"), "S_noise": 1.0}


def parse_int_ranges(text, what="seeds"):
    """'0-63,100' -> [0, ..., 63, 100] (order kept, ranges inclusive)."""
    values = []
    for part in str(text).split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            lo, hi = int(lo), int(hi) if dash else int(lo)
            if hi < lo or lo < 0:
                raise ValueError
        except ValueError:
            raise CLIError(f"bad {what} {text!r}: expected comma-separated non-negative integers "
                           f"and inclusive ranges like '0-63,100'") from None
        values.extend(range(lo, hi + 1))
    return values


# ---- models --------------------------------------------------------------------------------

def load_model(spec, device="cpu", **overrides):
    """(model, train info or None) from a checkpoint path (.pt or .safetensors), a shipped
    model's name (fastguide.assets) or a preset name (random weights, for timing)."""
    path = pathlib.Path(spec)
    if path.suffix in (".pt", ".pth", ".safetensors") or "/" in str(spec):
        if not path.exists():
            raise CLIError(f"checkpoint {spec} does not exist")
        model = load_checkpoint(path, device=device, **overrides)
        sidecar = path.with_suffix(".train.json")
        return model, json.loads(sidecar.read_text()) if sidecar.exists() else None
    if spec in assets.names():
        return assets.load(spec, device=device, **overrides), assets.train_info(spec)
    try:
        model = presets.create(spec, **overrides).to(device).eval()
    except KeyError:
        raise CLIError(f"unknown model {spec!r}: not a file, a shipped model ({assets.names()}) "
                       f"or a preset ({presets.names()})") from None
    print(f"warning: preset {spec!r} has random weights (for timing only)")
    return model, None


def diffusion_settings(model, info, noise_schedule=None, diffusion_steps=None):
    """The training process: from the model's .train.json, else the flags (guided-diffusion's
    released models: linear, 1000 steps), learn_sigma from the model's output channels."""
    d = dict((info or {}).get("diffusion", {}))
    d.setdefault("steps", diffusion_steps or 1000)
    d.setdefault("noise_schedule", noise_schedule or "linear")
    d.setdefault("learn_sigma", bool(getattr(model, "learn_sigma", False)))
    return d


# ---- one guided sampler --------------------------------------------------------------------

class GuidedSampler:
    """x = sampler(seeds, labels): one batch of images in [-1, 1].

    cfg_scale w: ε̃ = (1 + w)·ε(c) − w·ε(∅) (needs a null-class model). classifier_scale s:
    classifier guidance by s·∇ log p(y | x_t). unconditional=True runs the model on the null
    label (or without labels) and leaves the labels to the classifier alone.
    """

    def __init__(self, model, diffusion_info, sampler="ddim", steps=50, cfg_scale=0.0,
                 classifier=None, classifier_scale=0.0, unconditional=False, eta=0.0,
                 clip_denoised=True, edm=None):
        if sampler not in SAMPLERS:
            raise CLIError(f"unknown sampler {sampler!r}; choose from {list(SAMPLERS)}")
        if steps < 1 or steps > diffusion_info["steps"]:
            raise CLIError(f"steps must be in 1..{diffusion_info['steps']}, got {steps}")
        null = getattr(model, "null_label", None)
        if cfg_scale and null is None:
            raise CLIError("--cfg-scale needs a model trained with a null class (null_class=True)")
        if classifier_scale and classifier is None:
            raise CLIError("--classifier-scale needs --classifier")
        self.model, self.sampler, self.steps, self.eta = model, sampler, steps, eta
        # heun / euler: EDM's ρ and churn (S_churn, S_min, S_max, S_noise), eq. 5 and Alg. 2
        self.edm = dict(EDM_DEFAULTS, **(edm or {}))
        self.classifier, self.clip_denoised = classifier, clip_denoised
        self.conditional = getattr(model, "num_classes", None) is not None
        self.num_classes = (model.num_classes if self.conditional
                            else getattr(classifier, "out_channels", None))
        respacing = f"ddim{steps}" if sampler == "ddim" else str(steps)
        self.diffusion = create_gaussian_diffusion(
            steps=diffusion_info["steps"], noise_schedule=diffusion_info["noise_schedule"],
            learn_sigma=diffusion_info["learn_sigma"],
            timestep_respacing=respacing if sampler in ("ddim", "ddpm") else "")
        net = model
        if unconditional and self.conditional:
            if null is None:
                raise CLIError("--unconditional needs an unconditional or null-class model")
            net = _NullLabel(model, null)
        elif not self.conditional:
            net = without_labels(model)
        if cfg_scale:
            net = ClassifierFreeGuidance(net, cfg_scale, null_label=null)
        self.net, self.classifier_scale = net, float(classifier_scale)

    def __call__(self, seeds, labels, device="cpu", **model_kwargs):
        rng = StackedRandomGenerator(seeds, device)
        shape = (len(seeds), self.model.config["in_channels"], *self._size(model_kwargs))
        kwargs = dict(model_kwargs)
        if labels is not None:
            kwargs["y"] = torch.as_tensor(labels, dtype=torch.long, device=device)
        if self.sampler in ("ddim", "ddpm"):
            cond_fn = (classifier_cond_fn(self.classifier, self.classifier_scale)
                       if self.classifier_scale else None)
            loop = ddim_sample_loop if self.sampler == "ddim" else p_sample_loop
            extra = {"eta": self.eta} if self.sampler == "ddim" else {}
            return loop(self.diffusion, self.net, shape, cond_fn=cond_fn, model_kwargs=kwargs,
                        device=device, randn_like=rng.randn_like,
                        clip_denoised=self.clip_denoised, **extra)
        return self._sigma_sample(rng, shape, kwargs, device)

    def _size(self, model_kwargs):
        size = self.model.config["image_size"]
        if size is None:
            flag = "--upsample-image-size" if "low_res" in model_kwargs else "--image-size"
            raise CLIError(f"the model has no image_size (a guided-diffusion .pt does not store "
                           f"it); pass {flag}")
        return (size, size)

    def _sigma_sample(self, rng, shape, kwargs, device):
        """EDM's Heun / Euler on the network seen as a denoiser D(x, σ) (ADMDenoiser)."""
        adm = ADMDenoiser(self.net, self.diffusion, learned_sigma=self.model.learn_sigma)
        denoiser = adm
        if self.classifier_scale:
            denoiser = ClassifierGuidedDenoiser(adm, ADMClassifierGrad(self.classifier, adm),
                                                self.classifier_scale)
        # EDM's σ_max = 80 caps the cosine schedule's (σ ≈ 10⁴ at t = T); rounding to the
        # network's σ table can merge neighbouring levels, so repeats are dropped.
        churn = {k: v for k, v in self.edm.items() if k != "rho"}
        sigmas = edm_sigmas(self.steps, adm.sigma_min, min(adm.sigma_max, 80.0),
                            rho=self.edm["rho"], device=device, round_sigma=adm.round_sigma)
        sigmas = torch.unique_consecutive(sigmas)
        x = rng.randn(shape, device=device) * sigmas[0].to(torch.float32)
        fn = sample_heun if self.sampler == "heun" else sample_euler
        with torch.no_grad():  # churn noise from the per-seed generators: batch-independent
            out = fn(denoiser, x, sigmas, extra_args=kwargs, disable=True,
                     randn_like=rng.randn_like, **churn)
        return out.clamp(-1, 1) if self.clip_denoised else out


class _NullLabel(torch.nn.Module):
    """The model run on its null label whatever y is (unconditional half of a CFG model)."""

    def __init__(self, model, null_label):
        super().__init__()
        self.model, self.null_label = model, null_label

    def forward(self, x, t, y=None, **kwargs):
        y = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        return self.model(x, t, y=y, **kwargs)


# ---- seeds -> images on every rank -----------------------------------------------------------

def labels_for(seeds, num_classes, class_labels=None):
    """Labels in seed order: class_labels cycled, else seed mod num_classes."""
    if num_classes is None:
        return None
    if class_labels:
        bad = [c for c in class_labels if not 0 <= c < num_classes]
        if bad:
            raise CLIError(f"class labels {bad} are outside 0..{num_classes - 1}")
        return [class_labels[i % len(class_labels)] for i in range(len(seeds))]
    return [s % num_classes for s in seeds]


def generate(sampler, seeds, labels, batch_size=64, device="cpu", upsampler=None,
             progress=False, cache=None):
    """(uint8 NHWC images, labels) for every seed, in seed order. Under torch.distributed each
    rank samples its share (rank_batches) and rank 0 gets the gathered result; the other ranks
    get (None, None), so no rank but 0 holds the whole set in memory. cache (a BatchCache)
    keeps finished batches on disk and skips those an earlier run finished."""
    positions = torch.arange(len(seeds))
    mine = rank_batches(positions, batch_size, dist_util.rank(), dist_util.world_size())
    parts, reused = [], 0
    bar = tqdm(mine, desc="sample", unit="batch", disable=not (progress and dist_util.is_main()))
    for batch in bar:
        idx = batch.tolist()
        if not idx:
            continue
        batch_seeds = [seeds[i] for i in idx]
        batch_labels = None if labels is None else [labels[i] for i in idx]
        done = cache.load(batch_seeds, batch_labels) if cache is not None else None
        if done is not None:
            parts.append((idx, done))
            reused += 1
            bar.set_postfix(reused=reused)
            continue
        x = sampler(batch_seeds, batch_labels, device)
        if upsampler is not None:
            # ADM-U: the super-res model conditioned on the guided low-resolution samples; its
            # noise comes from the same seeds, offset so that it differs from the base's.
            x = upsampler([s + (1 << 31) for s in batch_seeds], batch_labels, device, low_res=x)
        finite = torch.isfinite(x).flatten(1).all(dim=1).cpu()
        if not bool(finite.all()):  # uint8 conversion would hide a diverged sample
            bad = [s for s, ok in zip(batch_seeds, finite.tolist()) if not ok]
            raise CLIError(f"sampling gave NaN or inf for seeds {bad[:10]}"
                           f"{' ...' if len(bad) > 10 else ''}; try --dtype float32, a lower "
                           f"guidance scale or more steps")
        parts.append((idx, float_to_uint8(x.cpu()).numpy()))
        if cache is not None:
            cache.save(batch_seeds, batch_labels, parts[-1][1])
    if torch.distributed.is_initialized():
        gathered = [None] * dist_util.world_size() if dist_util.is_main() else None
        torch.distributed.gather_object(parts, gathered, dst=0)
        if not dist_util.is_main():
            return None, None
        parts = [p for rank_parts in gathered for p in rank_parts]
    order = np.concatenate([np.asarray(i) for i, _ in parts])
    images = np.concatenate([a for _, a in parts])[np.argsort(order)]
    return images, None if labels is None else np.asarray(labels, dtype=np.int64)


# ---- output ----------------------------------------------------------------------------------

def _png(array):
    from PIL import Image
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images, path, columns=None, min_tile=32, pad=1):
    """uint8 NHWC images -> one PNG grid (tiles enlarged, nearest, to min_tile px, separated
    by pad grey pixels)."""
    n, h, w, c = images.shape
    scale = max(1, math.ceil(min_tile / max(h, w)))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 128, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, columns)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = images[k]
    _png(grid).save(path)
    return path


def write_outputs(images, labels, seeds, out_dir, grid=True, per_seed=False):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, h, w, c = images.shape
    npz = out_dir / f"samples_{n}x{h}x{w}x{c}.npz"
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(npz, **arrays)
    written = [npz]
    if grid:
        written.append(save_grid(images, out_dir / "grid.png"))
    if per_seed:
        for image, seed in zip(images, seeds):
            _png(image).save(out_dir / f"seed{seed:06d}.png")
        written.append(out_dir / "seed*.png")
    return written


# ---- the command -----------------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("--model", required=True,
                   help="a checkpoint (guided-diffusion .pt or fastguide .safetensors), a shipped "
                        "model (digits_unet) or a preset name (random weights)")
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--seeds", default="0-63", help="e.g. 0-63,100")
    p.add_argument("--class-labels", help="labels cycled over the seeds, e.g. 0-9 or 3,3,7")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η")
    g = p.add_argument_group("heun / euler (EDM, Karras et al. 2022)")
    g.add_argument("--rho", type=float, default=7.0, help="σ schedule exponent ρ")
    g.add_argument("--churn", type=float, default=0.0, help="S_churn (0: deterministic)")
    g.add_argument("--s-min", type=float, default=0.0, help="S_tmin: churn only for σ >= this")
    g.add_argument("--s-max", type=float, default=float("inf"), help="S_tmax")
    g.add_argument("--s-noise", type=float, default=1.0, help="S_noise")
    p.add_argument("--cfg-scale", type=float, default=0.0,
                   help="classifier-free guidance w: (1+w)·ε(c) − w·ε(∅)")
    p.add_argument("--classifier", help="noisy classifier checkpoint or shipped model name")
    p.add_argument("--classifier-scale", type=float, default=0.0)
    p.add_argument("--unconditional", action="store_true",
                   help="run the model on the null label; labels go to the classifier only")
    p.add_argument("--upsampler", help="super-resolution checkpoint: ADM-G + ADM-U two stages")
    p.add_argument("--upsample-steps", type=int, default=50)
    p.add_argument("--upsample-sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--noise-schedule", choices=["linear", "cosine"],
                   help="for checkpoints without a .train.json (default linear, as ADM's)")
    p.add_argument("--diffusion-steps", type=int, help="as --noise-schedule (default 1000)")
    _add_shape_arguments(p, "", "the model")
    _add_shape_arguments(p, "classifier-", "--classifier")
    _add_shape_arguments(p, "upsample-", "--upsampler")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--per-seed-png", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (rank 0 shows one)")
    p.add_argument("--no-resume", action="store_true",
                   help="do not keep finished batches in OUT/.partial (kept by default until the "
                        "outputs are written, so that rerunning a killed run resumes it)")


def _add_shape_arguments(p, prefix, what):
    """What a guided-diffusion .pt state dict cannot tell (its script flags)."""
    g = p.add_argument_group(f"guided-diffusion .pt files: {what}'s flags not in its state dict")
    g.add_argument(f"--{prefix}image-size", type=int)
    g.add_argument(f"--{prefix}num-heads", type=int)
    g.add_argument(f"--{prefix}num-head-channels", type=int)


_SHAPE_FIELDS = ("image_size", "num_heads", "num_head_channels")


# Options that do not change a batch's images (the batch key holds its seeds and labels).
_NOT_IN_KEY = {"seeds", "class_labels", "out", "batch_size", "grid", "per_seed_png",
               "no_progress", "no_resume", "device", "func", "command"}


def _settings_key(args):
    return settings_key({k: v for k, v in vars(args).items() if k not in _NOT_IN_KEY})


def _overrides(args, prefix=""):
    o = {f: getattr(args, prefix + f) for f in _SHAPE_FIELDS}
    o["dtype"] = args.dtype
    return {k: v for k, v in o.items() if v is not None}


def main(args):
    seeds = parse_int_ranges(args.seeds, "seeds")
    class_labels = parse_int_ranges(args.class_labels, "class labels") if args.class_labels else None
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = dist_util.setup(args.device)
    model, info = load_model(args.model, device, **_overrides(args))
    classifier = None
    if args.classifier:
        classifier, _ = load_model(args.classifier, device, **_overrides(args, "classifier_"))
    d = diffusion_settings(model, info, args.noise_schedule, args.diffusion_steps)
    edm = {"rho": args.rho, "S_churn": args.churn, "S_min": args.s_min, "S_max": args.s_max,
           "S_noise": args.s_noise}
    sampler = GuidedSampler(model, d, args.sampler, args.steps, args.cfg_scale, classifier,
                            args.classifier_scale, args.unconditional, args.eta, edm=edm)
    upsampler = None
    if args.upsampler:
        sr_model, sr_info = load_model(args.upsampler, device, **_overrides(args, "upsample_"))
        sr_d = diffusion_settings(sr_model, sr_info, args.noise_schedule, args.diffusion_steps)
        upsampler = GuidedSampler(sr_model, sr_d, args.upsample_sampler, args.upsample_steps)
    labels = labels_for(seeds, sampler.num_classes, class_labels)
    cache = None if args.no_resume else BatchCache(args.out, _settings_key(args))
    start = time.perf_counter()
    images, labels = generate(sampler, seeds, labels, args.batch_size, device, upsampler,
                              progress=not args.no_progress, cache=cache)
    if dist_util.is_main():
        written = write_outputs(images, labels, seeds, args.out, args.grid, args.per_seed_png)
        if cache is not None:
            cache.clear()
        print(f"{len(seeds)} images in {time.perf_counter() - start:.1f} s on "
              f"{dist_util.world_size()} rank(s): " + ", ".join(map(str, written)))
    dist_util.cleanup()
