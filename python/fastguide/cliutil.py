"""What every `fastguide` command shares: one error format, help that shows defaults, and
argument types that reject bad values before any work starts.

A user error ends with one line, `fastguide: error: ...`, and exit status 2: CLIError for
errors found by a command, Parser.error for those argparse finds. The argument types name the
option in their message because argparse prefixes it ("argument --rho: ...").
"""
import argparse
import math
import sys

__all__ = ["CLIError", "Parser", "HelpFormatter", "finite_float", "positive_float",
           "nonnegative_float", "positive_int", "nonnegative_int", "unit_interval",
           "float_list", "parse_int_ranges", "warn", "resolve_device", "MAX_SEED", "MAX_SEEDS"]

MAX_SEED = 2 ** 32 - 1  # torch.Generator seeds are 64-bit, but EDM's per-seed streams are 32-bit
MAX_SEEDS = 10_000_000  # a range longer than this is a typo, not a sampling run


class CLIError(Exception):
    """A user error: printed as 'fastguide: error: ...' with exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends '(default: X)' to every option that has
    a default worth showing (not None, not a plain on/off switch) and whose help does not
    already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, argparse.SUPPRESS) or isinstance(
                action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or not action.option_strings):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            default = f"--{'' if default else 'no-'}{action.dest.replace('_', '-')}"
            return f"{text} (default: {default})".strip()
        if isinstance(default, (list, tuple)):
            default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        return f"{text} (default: {default})".strip()


class Parser(argparse.ArgumentParser):
    """argparse with fastguide's error line and help formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"fastguide: error: {message}\n")


def warn(message):
    """A printed warning: for options that are accepted but do not do what they might seem to."""
    print(f"fastguide: warning: {message}", file=sys.stderr, flush=True)


# ---- argument types --------------------------------------------------------------------------

def _number(text, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _bounded(kind, ok, wanted):
    """An argparse type: a finite number of `kind` for which ok(value) holds, else 'must be
    <wanted>, got ...' (argparse adds the option's name)."""
    def parse(text):
        value = _number(text, kind)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value
    return parse


def finite_float(text):
    return _number(text, float)


positive_float = _bounded(float, lambda v: v > 0, "> 0")
nonnegative_float = _bounded(float, lambda v: v >= 0, ">= 0")
unit_interval = _bounded(float, lambda v: 0 <= v <= 1, "in [0, 1]")
positive_int = _bounded(int, lambda v: v >= 1, ">= 1")
nonnegative_int = _bounded(int, lambda v: v >= 0, ">= 0")


def float_list(text):
    """'0,0.5,1' -> [0.0, 0.5, 1.0], every value finite."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return [finite_float(p) for p in parts]


def parse_int_ranges(text, what="seeds", high=MAX_SEED):
    """'0-63,100' -> [0, ..., 63, 100] (order kept, ranges inclusive), each value in 0..high."""
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
        if hi > high:
            raise CLIError(f"bad {what} {text!r}: {hi} is above the largest allowed, {high}")
        if len(values) + hi - lo + 1 > MAX_SEEDS:
            raise CLIError(f"bad {what} {text!r}: more than {MAX_SEEDS:,} values")
        values.extend(range(lo, hi + 1))
    return values


def resolve_device(text, option="--device"):
    """A torch.device that exists on this machine, or a CLIError naming the option.
    None: CUDA (this rank's GPU under torchrun) when available, else the CPU."""
    import os

    import torch
    if text is None:
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"{option} {text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise CLIError(f"{option} {text}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"{option} {text}: there are only {torch.cuda.device_count()} GPUs")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"{option} {text}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"{option} {text}: fastguide runs on cpu, cuda or mps")
    return device
