"""Which implementation each norm and attention call runs, and the table that decides it.

Backends (model.set_backend, or per layer):

    "fused"      the default: per call, the hand-written kernel where a committed GPU
                 measurement shows it faster on this device, else the known-good alternative
    "kernel"     always fastguide's kernels (tests, benchmarks)
    "reference"  pure PyTorch in float32, the oracle
    and per family: "eager" (AdaGN: guided-diffusion's GroupNorm -> scale/shift -> SiLU chain),
    "sdpa" (attention: torch's scaled_dot_product_attention) -- the alternatives themselves

"fused" looks its call up in TABLE under the key

    (op family, device, dtype, layout, shape class)

device is "sm_XY" (the CUDA compute capability), dtype the torch dtype's name, layout
"channels_last" or "contiguous", the shape class a coarse bucket of the shape (adagn_key,
attention_key). TABLE is filled ONLY from committed GPU measurements (benchmarks/results/*.json,
`python -m fastguide.dispatch fill`): a key without an entry takes the alternative, so "fused" is
never slower than the alternative where nothing was measured. On the CPU the kernels are always
taken (measured faster there: benchmarks/results/adagn_cpu.json, attention_cpu.json).

Nothing is timed at run time: the same inputs take the same path every run, so the same seeds
give the same images.

Benchmarks feed the table through rows carrying
    "dispatch": [{"key": [op, device, dtype, layout, shape_class], "kernel_s": t, "alternative_s": t}, ...]
(one entry per measured pass, forward and backward); a key becomes "kernel" only when every
entry for it has alternative_s / kernel_s >= the margin (1.05 by default).
"""
import argparse
import json
import pathlib
import re
import sys

import torch

__all__ = ["TABLE", "ALTERNATIVE", "MODEL_BACKENDS", "NORM_BACKENDS", "ATTENTION_BACKENDS",
           "device_key", "adagn_key", "attention_key", "choose", "resolve", "dispatch_report",
           "table_from_rows"]

# BEGIN TABLE (written by `python -m fastguide.dispatch fill --write`; do not edit by hand)
TABLE = {
}
# END TABLE

ALTERNATIVE = {"adagn": "eager", "attention": "sdpa"}
MODEL_BACKENDS = ("fused", "kernel", "reference")
NORM_BACKENDS = ("fused", "kernel", "eager", "reference")
ATTENTION_BACKENDS = ("fused", "kernel", "sdpa", "reference")
MARGIN = 1.05

_CAPABILITY = {}


@torch.compiler.assume_constant_result
def _capability(index: int) -> str:
    if index not in _CAPABILITY:
        major, minor = torch.cuda.get_device_capability(index)
        _CAPABILITY[index] = f"sm_{major}{minor}"
    return _CAPABILITY[index]


def device_key(device):
    """"cpu", "sm_90", ...: the device part of a dispatch key."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def _bucket(value, edges):
    for e in edges:
        if value <= e:
            return f"<={e}"
    return f">{edges[-1]}"


def _channels_last(x):
    return x.dim() >= 3 and not x.is_contiguous() and x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def adagn_key(x):
    """(op, device, dtype, layout, shape class) of a group_norm_act call on x [N, C, *spatial]."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // max(1, n * c)
    shape = f"n{_bucket(n, (1, 8, 32))}-hw{_bucket(s, (64, 256, 1024, 4096, 16384, 65536))}-c{_bucket(c, (256, 512, 1024))}"
    layout = "channels_last" if _channels_last(x) else "contiguous"
    return ("adagn", device_key(x.device), str(x.dtype).removeprefix("torch."), layout, shape)


def attention_key(qkv, num_heads):
    """The key of an attention call on qkv [N, 3C, L] (tokens-major storage counts as
    channels_last: the [N, L, 3C] tensor a channels-last model produces)."""
    n, c3, length = qkv.shape
    tokens = not qkv.is_contiguous() and qkv.transpose(1, 2).is_contiguous()
    shape = f"n{_bucket(n, (1, 8, 32))}-l{_bucket(length, (64, 256, 1024, 4096))}-d{c3 // (3 * num_heads)}"
    return ("attention", device_key(qkv.device), str(qkv.dtype).removeprefix("torch."),
            "channels_last" if tokens else "contiguous", shape)


def choose(key):
    """"kernel" or the family's alternative for a key: the kernel on the CPU, else TABLE's
    entry, else the alternative."""
    op, device = key[0], key[1]
    if not device.startswith("sm_"):
        return "kernel"
    return TABLE.get(tuple(key), ALTERNATIVE[op])


# ---- run-time resolution and the report -------------------------------------------------------

_RECORD = None  # a list while dispatch_report runs a model, else None
_LAYERS = []    # names of the layers being run (dispatch_report's hooks)


def resolve(op, backend, device, key_fn):
    """The path a call on `device` takes: "kernel", the alternative, or "reference". key_fn()
    gives the full dispatch key; it is only built when the table has entries for the device
    (and while a report is recorded): the common cases cost a device check."""
    path = backend
    if backend == "fused":
        dev = device_key(device)
        if not dev.startswith("sm_"):
            path = "kernel"
        elif not any(k[1] == dev for k in TABLE):
            path = ALTERNATIVE[op]
        else:
            path = choose(key_fn())
    if _RECORD is not None:
        _RECORD.append({"layer": _LAYERS[-1] if _LAYERS else "", "op": op, "backend": backend,
                        "path": path, "key": list(key_fn())})
    return path


def _static_path(op, backend, device):
    if backend != "fused":
        return backend
    dev = device_key(device)
    if not dev.startswith("sm_"):
        return "kernel"
    if not any(k[0] == op and k[1] == dev for k in TABLE):
        return ALTERNATIVE[op]
    return None  # depends on the shapes: pass example inputs


def dispatch_report(model, *example_args, **example_kwargs):
    """Which path each norm and attention call of `model` takes, as a list of dicts
    {"layer", "op", "backend", "path", "key"}.

    With example inputs the model runs once on them (no grad) and every call is reported with
    its dispatch key. Without, each layer is listed with its backend and the path when it does
    not depend on the shapes (path None: it does; pass example inputs)."""
    from .nn import AttentionBlock, AttentionPool2d, GroupNormAct
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (GroupNormAct, AttentionBlock, AttentionPool2d))]
    if not example_args and not example_kwargs:
        device = next(model.parameters()).device
        rows = []
        for name, m in layers:
            ops = [("attention", m.backend)] if not isinstance(m, GroupNormAct) else [("adagn", m.backend)]
            rows += [{"layer": name, "op": op, "backend": b, "path": _static_path(op, b, device),
                      "key": None} for op, b in ops]
        return rows
    global _RECORD

    def enter(name):
        def hook(module, args):
            _LAYERS.append(name)
        return hook

    def leave(module, args, out):
        _LAYERS.pop()

    handles = []
    for name, m in layers:
        handles += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave)]
    _RECORD = rows = []
    try:
        with torch.no_grad():
            model(*example_args, **example_kwargs)
    finally:
        _RECORD = None
        _LAYERS.clear()
        for h in handles:
            h.remove()
    return rows


# ---- filling the table from benchmark results --------------------------------------------------

def table_from_rows(rows, margin=MARGIN):
    """{key: "kernel"} for every key whose measured entries all favour the kernel by `margin`;
    keys where the alternative wins anywhere are left out (they take the alternative)."""
    ratios = {}
    for row in rows:
        for entry in row.get("dispatch", []):
            key = tuple(entry["key"])
            if not key[1].startswith("sm_"):
                continue  # only GPU measurements decide
            ratios.setdefault(key, []).append(entry["alternative_s"] / entry["kernel_s"])
    return {k: "kernel" for k, r in sorted(ratios.items()) if min(r) >= margin}


def _table_source(table):
    lines = ["TABLE = {"]
    lines += [f"    {tuple(k)!r}: {v!r}," for k, v in sorted(table.items())]
    return "\n".join(lines + ["}"])


def _write_table(table):
    path = pathlib.Path(__file__)
    text = path.read_text()
    pattern = re.compile(r"(# BEGIN TABLE[^\n]*\n).*?(\n# END TABLE)", re.S)
    if not pattern.search(text):
        raise SystemExit("fastguide: error: the TABLE markers are missing from dispatch.py")
    path.write_text(pattern.sub(lambda m: m.group(1) + _table_source(table) + m.group(2), text))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastguide.dispatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fill = sub.add_parser("fill", help="the table from benchmark JSON files (GPU runs only)")
    fill.add_argument("files", nargs="+", type=pathlib.Path)
    fill.add_argument("--margin", type=float, default=MARGIN)
    fill.add_argument("--write", action="store_true", help="rewrite TABLE in dispatch.py")
    sub.add_parser("show", help="print the table")
    args = p.parse_args(argv)
    if args.command == "show":
        print(_table_source(TABLE))
        return 0
    if not args.margin >= 1.0:
        p.error("--margin must be at least 1.0 (a smaller margin could pick a slower kernel)")
    rows = []
    for f in args.files:
        if not f.is_file():
            p.error(f"no such file: {f}")
        rows += json.loads(f.read_text()).get("rows", [])
    table = table_from_rows(rows, args.margin)
    print(_table_source(table))
    if args.write:
        _write_table(table)
        print(f"wrote {len(table)} entries to {pathlib.Path(__file__).name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
