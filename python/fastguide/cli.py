"""fastguide: fast guided diffusion for PyTorch. Samples, trains, converts and benchmarks ADM
models (guided-diffusion's UNet, noisy classifier and upsampler), with classifier guidance,
classifier-free guidance, autoguidance and EDM's samplers.

commands:
  demo      guided sampling from the shipped digits model, with a table of accuracy / FID /
            precision / recall per guidance scale (CPU, about a minute)
  sample    seeds -> npz (guided-diffusion's format) + PNGs, any sampler and guidance;
            torchrun shards the seeds over ranks
  train     train a diffusion model or a (noisy) classifier, one process or torchrun
  convert   guided-diffusion .pt -> fastguide .safetensors + .json
  inpaint   inpaint masked pixels of given images (replace or RePaint)
  img2img   SDEdit: noise given images part way, then sample
  invert    DDIM / probability-flow inversion: images -> noise, and back to check
  upsample  super-resolve given low-resolution images with ADM-U
  eval      IS, FID, sFID, precision, recall as guided-diffusion's evaluator computes them
  bench     the benchmark suite (fastguide.bench)

Run `fastguide COMMAND --help` for each command's options and examples. A user error ends with
one line, `fastguide: error: ...`, and exit status 2.
"""
import importlib
import sys

from .cliutil import CLIError, Parser
from .nn.infer import CheckpointError  # an unreadable or mismatched checkpoint: a user error

__all__ = ["main", "build_parser", "CLIError"]


# name -> (module with add_arguments(parser) and main(args), help)
_MODULE_COMMANDS = {
    "demo": (".eval.demo", "guided sampling from the shipped digits model + metrics"),
    "sample": (".commands.sample", "sample images (npz + PNG grid / per-seed PNGs)"),
    "train": (".train.run", "train a diffusion model or a noisy classifier"),
    "convert": (".commands.convert", "guided-diffusion .pt -> fastguide .safetensors + .json"),
    "inpaint": (".commands.inpaint", "inpaint masked pixels of given images (RePaint)"),
    "img2img": (".commands.img2img", "SDEdit: noise given images part way, then sample"),
    "invert": (".commands.invert", "DDIM / probability-flow inversion: images -> noise"),
    "upsample": (".commands.upsample", "super-resolve given low-resolution images (ADM-U)"),
    "eval": (".eval.evaluator", "IS, FID, sFID, precision, recall as guided-diffusion's evaluator"),
}

# Errors a user causes (a missing file, a refused overwrite, ...): one line, exit status 2.
USER_ERRORS = (CLIError, CheckpointError, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, PermissionError)


def _add_module_command(sub, name):
    module_name, help_text = _MODULE_COMMANDS[name]
    module = importlib.import_module(module_name, __package__)
    p = sub.add_parser(name, help=help_text, description=help_text)
    module.add_arguments(p)
    p.set_defaults(func=module.main)


def _run_bench(argv):
    try:
        bench = importlib.import_module(".bench", __package__)
    except ImportError as e:
        raise CLIError(f"the benchmark suite (fastguide.bench) is not available: {e}") from None
    if not hasattr(bench, "main"):
        raise CLIError("fastguide.bench has no main(argv); the benchmark suite is incomplete")
    return bench.main(argv)


def _version():
    from . import __version__, build_info
    import torch
    info = build_info()
    cuda = f"CUDA kernels for {','.join(info['cuda_archs'])}" if info["cuda"] else "CPU kernels"
    return f"fastguide {__version__} (torch {torch.__version__}, {cuda})"


def build_parser():
    p = Parser(prog="fastguide", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           parser_class=Parser)
    for name in _MODULE_COMMANDS:
        _add_module_command(sub, name)
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
        return 0
    except USER_ERRORS as e:
        message = str(e).strip().replace("\n", "\n  ")
        parser.exit(2, f"fastguide: error: {message}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\nfastguide: interrupted\n")
