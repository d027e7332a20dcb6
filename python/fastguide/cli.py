"""The `fastguide` command.

    fastguide demo                      guided sampling from the shipped digits model, with a
                                        table of accuracy / FID / precision / recall per scale
    fastguide sample --model M ...      seeds -> npz (guided-diffusion format) + PNGs; torchrun
                                        shards the seeds over ranks
    fastguide train ...                 train a diffusion model or a (noisy) classifier
    fastguide convert IN.pt OUT.safetensors
    fastguide bench ...                 the benchmark suite (fastguide.bench)

Errors a user can cause (a missing file, a bad seed string, an unknown preset) end with a
one-line message and exit status 2, not a traceback.
"""
import argparse
import importlib
import sys

from .nn.infer import CheckpointError  # an unreadable or mismatched checkpoint: a user error

__all__ = ["main", "build_parser", "CLIError"]


class CLIError(Exception):
    """A user error: printed as 'fastguide: error: ...' with exit status 2."""


# name -> (module with add_arguments(parser) and main(args), help)
_MODULE_COMMANDS = {
    "demo": (".eval.demo", "guided sampling from the shipped digits model + metrics"),
    "sample": (".eval.generate", "sample images (npz + PNG grid / per-seed PNGs)"),
    "train": (".train.run", "train a diffusion model or a noisy classifier"),
    "eval": (".eval.evaluator", "IS, FID, sFID, precision, recall as guided-diffusion's evaluator"),
}


def _add_module_command(sub, name):
    module_name, help_text = _MODULE_COMMANDS[name]
    module = importlib.import_module(module_name, __package__)
    p = sub.add_parser(name, help=help_text)
    module.add_arguments(p)
    p.set_defaults(func=module.main)


def _add_convert(sub):
    p = sub.add_parser("convert", help="guided-diffusion .pt -> fastguide .safetensors + .json")
    p.add_argument("checkpoint", help="a guided-diffusion .pt state dict")
    p.add_argument("output", help="the .safetensors path to write (the config goes to .json)")
    p.add_argument("--num-heads", type=int, help="attention heads (not in the state dict)")
    p.add_argument("--num-head-channels", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--use-new-attention-order", action="store_true", default=None)
    p.set_defaults(func=_run_convert)


def _run_convert(args):
    import pathlib

    from .nn.checkpoint import load_checkpoint, save_model
    src, dst = pathlib.Path(args.checkpoint), pathlib.Path(args.output)
    if not src.exists():
        raise CLIError(f"checkpoint {src} does not exist")
    if dst.suffix != ".safetensors":
        raise CLIError(f"the output must end in .safetensors, got {dst}")
    overrides = {k: v for k, v in dict(num_heads=args.num_heads,
                                       num_head_channels=args.num_head_channels,
                                       image_size=args.image_size,
                                       use_new_attention_order=args.use_new_attention_order).items()
                 if v is not None}
    model = load_checkpoint(src, **overrides)
    save_model(model, dst)
    print(f"wrote {dst} and {dst.with_suffix('.json')} ({model.config['kind']}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters)")


def _run_bench(argv):
    try:
        bench = importlib.import_module(".bench", __package__)
    except ImportError as e:
        raise CLIError(f"the benchmark suite (fastguide.bench) is not available: {e}") from None
    if not hasattr(bench, "main"):
        raise CLIError("fastguide.bench has no main(argv); the benchmark suite is incomplete")
    return bench.main(argv)


def build_parser():
    p = argparse.ArgumentParser(prog="fastguide", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _MODULE_COMMANDS:
        _add_module_command(sub, name)
    _add_convert(sub)
    sub.add_parser("bench", help="the benchmark suite (arguments go to fastguide.bench)",
                   add_help=False)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        if argv and argv[0] == "bench":  # everything after 'bench' belongs to the suite
            return _run_bench(argv[1:]) or 0
        args = parser.parse_args(argv)
        args.func(args)
    except (CLIError, FileNotFoundError, CheckpointError) as e:
        parser.exit(2, f"fastguide: error: {e}\n")
    return 0
