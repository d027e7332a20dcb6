"""What `fastguide inpaint`, `img2img`, `invert` and `upsample` share with `fastguide sample`:
the same sampler, guidance, process and output options (taken from sample's parser, so their
names, types, defaults and help cannot drift apart), the same validation before any work, the
same outputs (OutputDir: npz + grid.png + per-seed PNGs + manifest, --overwrite), resumable
batches and Ctrl-C message; plus the editing inputs (--image, --seeds, --class-labels) and a
compare.png that puts each input beside its result.
"""
import hashlib
import json
import math
import pathlib
import time

import numpy as np

from ..atomic import atomic_write
from ..cliutil import CLIError, Parser, parse_int_ranges, positive_int, resolve_device, warn
from ..editing.inputs import InputError
from ..pipeline import (BatchCache, ModelSpecError, NonFiniteSamples, OptionError, OutputDir,
                        generate, settings_key)
from ..pipeline.output import MANIFEST, save_png
from ..train import distributed as dist_util
from . import sample

__all__ = ["add_common_arguments", "copy_sample_arguments", "build_base", "user_errors",
           "EditRun", "COMPARE_LIMIT"]

COMPARE_LIMIT = 100  # outputs shown in compare.png

# sample's argument groups the base-model commands take whole.
BASE_GROUPS = ("sampler", "guidance", "diffusion process", "the model:", "--classifier:",
               "output and runtime")
# What sample._build reads of the flags these commands do not have.
_SAMPLE_ONLY = dict(upsampler=None, upsample_sampler=None, upsample_steps=None,
                    upsample_noise_schedule=None, upsample_diffusion_steps=None,
                    upsample_image_size=None, upsample_num_heads=None,
                    upsample_num_head_channels=None, allow_other_size=False)


def copy_sample_arguments(p, groups, dests=None, skip=()):
    """Add `fastguide sample`'s options to p: the groups whose titles start with one of
    `groups` (and, with dests, only those options)."""
    source = Parser(prog="fastguide sample")
    sample.add_arguments(source)
    for group in source._action_groups:
        if not group.title or not group.title.startswith(groups):
            continue
        actions = [a for a in group._group_actions if (dests is None or a.dest in dests)
                   and a.dest not in skip]
        if actions:
            target = p.add_argument_group(group.title)
            for action in actions:
                target._add_action(action)


def add_common_arguments(p, model_help, image_flag="--image", image_help=None, out="edited",
                         seeds=True):
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument(image_flag, required=True, dest=image_flag.lstrip("-").replace("-", "_"),
                   help=image_help or "the images: a PNG, a folder of PNGs, guided-diffusion's "
                                      ".npz (arr_0 uint8 NHWC, arr_1 labels) or a .npy; at "
                                      "the model's size and channels")
    p.add_argument("--out", default=out, help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --out (they are removed first)")
    if seeds:
        p.add_argument("--seeds", default=None,
                       help="one output per seed, output k editing image k mod N (default: "
                            "one seed per image, 0..N-1); e.g. 0-15 edits one image 16 ways")
    p.add_argument("--class-labels", help="labels cycled over the outputs (default: the npz's "
                                          "arr_1)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")


def user_errors(fn, *args, **kwargs):
    """fn(...) with every user mistake it raises turned into a CLIError naming the flag."""
    try:
        return fn(*args, **kwargs)
    except OptionError as e:
        raise CLIError(f"{sample._flag(e.option)} {e.detail}") from None
    except (InputError, ModelSpecError, ValueError) as e:
        raise CLIError(str(e)) from None


def build_base(args, device):
    """(pipeline, GuidedSampler) of a base-model command, as `fastguide sample` builds them."""
    for key, value in _SAMPLE_ONLY.items():
        setattr(args, key, value)
    sample._unused_flags(args)
    try:
        pipe, base, _ = user_errors(sample._build, args, device)
    except CLIError as e:  # the loaders speak of sample's --model
        raise CLIError(str(e).replace("--model", "MODEL").replace(
            "pass it as --upsampler", "super-resolution models run with `fastguide upsample`")
        ) from None
    sample._check_sizes(pipe, base)
    return pipe, base


def parse_seeds(args):
    text = getattr(args, "seeds", None)
    return None if text is None else parse_int_ranges(text, "--seeds")


def parse_labels(args):
    if not args.class_labels:
        return None
    return parse_int_ranges(args.class_labels, "--class-labels", high=10 ** 9)


def _digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# ---- compare.png -----------------------------------------------------------------------------

def save_comparison(columns, path, pad=1, gap=3, min_tile=32):
    """columns: uint8 NHWC arrays of equal shape (e.g. input, masked input, output); image k's
    tiles side by side, the blocks on a near-square grid, blocks separated by gap px."""
    n, h, w, c = columns[0].shape
    scale = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * scale, w * scale
    block_w = len(columns) * (tw + pad) - pad
    per_row = math.ceil(math.sqrt(n * th / max(block_w, 1)))
    per_row = max(1, min(n, per_row))
    rows = math.ceil(n / per_row)
    grid = np.full((rows * (th + gap) + gap, per_row * (block_w + gap) + gap, c), 128, np.uint8)
    for k in range(n):
        top = gap + (k // per_row) * (th + gap)
        left = gap + (k % per_row) * (block_w + gap)
        for j, images in enumerate(columns):
            x = left + j * (tw + pad)
            grid[top:top + th, x:x + tw] = images[k].repeat(scale, 0).repeat(scale, 1)
    return save_png(grid, path)


# ---- one run ---------------------------------------------------------------------------------

class EditRun:
    """Output directory, resumable batches and progress of one editing command."""

    def __init__(self, args, shape_hwc, extra_files=()):
        self.args = args
        self.out = OutputDir(args.out, overwrite=args.overwrite)
        self.shape = shape_hwc
        self.extra_files = list(extra_files)
        self.cache = None

    def check(self, seeds):
        planned = self.out.planned(len(seeds), self.shape,
                                   seeds if self.args.per_seed_png else (), self.args.grid)
        if dist_util.is_main():
            self.out.check(planned + self.extra_files)

    def settings(self, inputs):
        skip = {"seeds", "class_labels", "out", "overwrite", "batch_size", "grid",
                "per_seed_png", "png_scale", "no_progress", "no_resume", "device", "func",
                "command", *_SAMPLE_ONLY}
        settings = {k: v for k, v in vars(self.args).items() if k not in skip}
        settings["inputs_sha256"] = _digest(inputs)  # a folder's files may change in place
        return settings

    def generate(self, job, seeds, labels, device, inputs, upsampler=None):
        """generate() with the batch cache; Ctrl-C keeps the finished batches."""
        cache = None if self.args.no_resume else BatchCache(
            self.args.out, settings_key(self.settings(inputs), ("model", "classifier",
                                                                 "weak_model")))
        self.cache = cache
        try:
            return generate(job, seeds, labels, self.args.batch_size, device, upsampler,
                            progress=not self.args.no_progress, cache=cache,
                            desc=self.args.command)
        except KeyboardInterrupt:
            raise SystemExit(sample._interrupted(cache, self.out)) from None
        except NonFiniteSamples as e:
            raise CLIError(str(e)) from None

    def write(self, images, labels, seeds, inputs, extras=None, start=None):
        """The outputs of `fastguide sample`, then compare.png (and extras: name -> writer)
        added to the manifest."""
        args = self.args
        removed = self.out.remove_earlier() if args.overwrite else []
        if removed:
            print(f"removed {len(removed)} files of the earlier run in {args.out}: "
                  f"{', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}")
        written = self.out.write(images, labels, seeds, args.grid, args.per_seed_png,
                                 args.png_scale, settings=self.settings(inputs))
        for name, writer in (extras or {}).items():
            path = self.out.path / name
            atomic_write(path, writer)
            written.append(path)
        manifest = self.out.path / MANIFEST
        record = json.loads(manifest.read_text())
        record["files"] = [p.name for p in written]
        atomic_write(manifest, lambda tmp: pathlib.Path(tmp).write_text(
            json.dumps(record, indent=1, default=str) + "\n"))
        if self.cache is not None:
            self.cache.clear()
        took = f" in {time.perf_counter() - start:.1f} s" if start is not None else ""
        print(f"{len(seeds)} images{took}: " + ", ".join(map(str, written[:3]))
              + (f" and {len(written) - 3} more" if len(written) > 3 else ""))
        return written

    def finish(self):
        dist_util.cleanup()


def setup_device(args):
    return dist_util.setup(resolve_device(args.device))


def announce(notes):
    for note in notes:
        warn(note)
