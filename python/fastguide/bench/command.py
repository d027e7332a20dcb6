"""`fastguide bench` / `python -m fastguide.bench`: forward throughput and MFU of the ADM
presets on five backends side by side, the training step, and end-to-end guided sampling.

    python -m fastguide.bench --suite cpu                      # < 1 min, tiny configs, fp32
    python -m fastguide.bench --suite gpu                      # H100/H200, ~8 min, full grid
    python -m fastguide.bench --suite gpu --sections forward --models imagenet256_cond

Results go to the --out JSON (device, torch, commit, date inside); without --out, to
./fastguide-bench-<suite>-<device>.json. An existing file is never replaced unless --overwrite
(or --merge) is given. Committed results live in benchmarks/results/ (pass that path as --out);
`python benchmarks/README_table.py` renders the README's tables from them. On a CPU every
backend runs float32 (low-precision CPU convolutions are slow emulations); the printed rows and
the JSON say which dtype each ran in.
"""
import dataclasses
import json
import pathlib
import re
import sys

import torch

from ..cliutil import CLIError, Parser, positive_float, resolve_device
from .backends import BACKENDS
from .flops import peak_flops
from .models import model_config
from .results import SECTIONS, Recorder, validate
from .run import run_suite
from .suites import SUITES
from .timing import run_metadata

__all__ = ["main", "run_command", "parse_args", "build_parser", "default_out"]

EXAMPLES = """examples:
  fastguide bench --suite cpu --out /tmp/bench_cpu.json
  fastguide bench --suite gpu --sections forward --models imagenet256_cond --batches 1,32
  fastguide bench --suite gpu --backends compile_bf16 --out results.json --merge"""


def build_parser():
    p = Parser(prog="fastguide bench", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--suite", choices=list(SUITES), default=None,
                   help="default: gpu on a CUDA device, cpu otherwise")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=None, help="JSON path (default ./fastguide-bench-<suite>-"
                   "<device>.json); '-' writes no file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated subset of {','.join(BACKENDS)} (default: the suite's)")
    p.add_argument("--models", default=None, help="comma-separated forward-grid models "
                   "(preset names or tiny_unet / tiny_classifier; default: the suite's)")
    p.add_argument("--batches", default=None, help="comma-separated forward batch sizes")
    p.add_argument("--time-budget", type=positive_float, default=None,
                   help="seconds (default: the suite's)")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="leave torch.backends.cudnn.benchmark off (on by default)")
    p.add_argument("--merge", action="store_true",
                   help="merge into the existing --out file: re-measured cells replace theirs, "
                   "the rest is kept (e.g. the compile cells from a second call)")
    p.add_argument("--quiet", action="store_true", help="print nothing while running (the JSON has every row)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for option, given, known in (("--sections", args.sections, SECTIONS),
                                 ("--backends", args.backends, BACKENDS)):
        bad = sorted(set(_csv(given)) - set(known))
        if bad:
            p.error(f"{option}: unknown {', '.join(bad)}; choose from {', '.join(known)}")
    for name in _csv(args.models):
        try:
            model_config(name)
        except KeyError:
            p.error(f"--models: unknown model {name!r}; use a preset name (e.g. "
                    "imagenet64_cond), a released checkpoint's name (64x64_diffusion) or "
                    "tiny_unet / tiny_classifier")
    try:
        batches = [int(b) for b in _csv(args.batches)]
    except ValueError:
        p.error(f"--batches: expected comma-separated positive integers, got {args.batches!r}")
    if any(b < 1 for b in batches):
        p.error(f"--batches: batch sizes must be >= 1, got {args.batches!r}")
    if args.device is not None:
        try:
            resolve_device(args.device)
        except CLIError as e:
            p.error(str(e))
    return args


def _csv(text):
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def _customised(suite, args):
    """The suite with the command line's overrides applied."""
    changes = {}
    if args.backends:
        chosen = _csv(args.backends)
        for field in ("forward_backends", "train_backends"):
            changes[field] = tuple(b for b in getattr(suite, field) if b in chosen)
        changes["sampling_runs"] = tuple(
            dataclasses.replace(r, backends=tuple(b for b in r.backends if b in chosen))
            for r in suite.sampling_runs)
        changes["excluded"] = {**suite.excluded, **{
            (s, b): "not selected (--backends)" for s in SECTIONS for b in BACKENDS
            if b not in chosen}}
    if args.models:
        changes["forward_models"] = tuple(_csv(args.models))
    if args.batches:
        changes["forward_batches"] = tuple(int(b) for b in _csv(args.batches))
        changes["forward_batches_for"] = {}
    if args.time_budget is not None:
        changes["time_budget_s"] = args.time_budget
    return dataclasses.replace(suite, **changes)


def default_out(suite, device):
    """./fastguide-bench-<suite>-<device slug>.json: outside the committed results."""
    slug = "cpu" if device.type == "cpu" else re.sub(
        r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return pathlib.Path(f"fastguide-bench-{suite.name}-{slug}.json")


def main(argv=None):
    """Entry point of `fastguide bench` (argv: the arguments after "bench"). Returns the exit
    status: 0, 1 when the result file fails validation (the problems are printed), 2 for a
    user error (printed as one line)."""
    try:
        return 1 if validate(run_command(argv)) else 0
    except CLIError as e:
        print(f"fastguide: error: {e}", file=sys.stderr)
        return 2


def run_command(argv=None):
    """What main does, returning the result dict (the JSON file's content)."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    suite = _customised(SUITES[args.suite or ("gpu" if device.type == "cuda" else "cpu")], args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    out = None if args.out == "-" else pathlib.Path(args.out or default_out(suite, device))
    if out is not None and out.exists() and not (args.overwrite or args.merge):
        raise CLIError(f"{out} already exists; pass --overwrite to replace it, --merge to merge "
                       "into it, or another --out")
    if out is not None and not out.parent.is_dir():
        raise CLIError(f"--out {out}: the directory {out.parent} does not exist")
    meta = {**run_metadata(device), "peak_flops": peak_flops(device),
            "peak_flops_note": "dense bf16/fp16 matmul peak of H100/H200 (adm_flops.md); "
                               "MFU = counted FLOPs / time / peak; none on a CPU",
            "cudnn_benchmark": device.type == "cuda" and not args.no_cudnn_benchmark}
    backends = {name: b.describe(suite.dtype_override(device)) for name, b in BACKENDS.items()}
    log = (lambda *a: None) if args.quiet else (lambda line: print(line, flush=True))
    base = json.loads(out.read_text()) if args.merge and out is not None and out.exists() else None
    rec = Recorder(out, suite.name, meta, suite.config(), backends, log=log, base=base)
    data = run_suite(suite, device, rec, sections=tuple(_csv(args.sections)))
    for problem in validate(data):
        print(f"invalid result: {problem}", file=sys.stderr)
    if out is not None:
        log(f"wrote {out}")
    return data
