"""`fastguide convert`: a guided-diffusion .pt state dict -> fastguide's .safetensors + .json
(the config recorded, so later loads need no flags and unpickle nothing)."""
import pathlib

from ..cliutil import CLIError, positive_int
from ..nn.checkpoint import load_checkpoint, save_model

__all__ = ["add_arguments", "main"]

EXAMPLES = """examples:
  fastguide convert 256x256_diffusion.pt adm256.safetensors
  fastguide convert my_model.pt my_model.safetensors --image-size 64 --num-head-channels 64
"""


def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    p.add_argument("checkpoint", help="a guided-diffusion .pt state dict (any file name)")
    p.add_argument("output", help="the .safetensors path to write (the config goes to .json)")
    p.add_argument("--num-heads", type=positive_int, help="attention heads (not in the state dict)")
    p.add_argument("--num-head-channels", type=positive_int,
                   help="channels per attention head (overrides --num-heads)")
    p.add_argument("--image-size", type=positive_int, help="the model's image size")
    p.add_argument("--use-new-attention-order", action="store_true", default=None,
                   help="the qkv order of guided-diffusion's --use_new_attention_order True")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def main(args):
    src, dst = pathlib.Path(args.checkpoint), pathlib.Path(args.output)
    if not src.is_file():
        raise CLIError(f"checkpoint {src} does not exist" if not src.exists()
                       else f"checkpoint {src} is not a file")
    if dst.suffix != ".safetensors":
        raise CLIError(f"the output must end in .safetensors, got {dst}")
    if not dst.parent.is_dir():
        raise CLIError(f"cannot write {dst}: the directory {dst.parent} does not exist")
    existing = [p for p in (dst, dst.with_suffix(".json")) if p.exists()]
    if existing and not args.overwrite:
        raise CLIError(f"{existing[0]} already exists; pass --overwrite to replace it")
    overrides = {k: v for k, v in dict(num_heads=args.num_heads,
                                       num_head_channels=args.num_head_channels,
                                       image_size=args.image_size,
                                       use_new_attention_order=args.use_new_attention_order).items()
                 if v is not None}
    model = load_checkpoint(src, **overrides)
    save_model(model, dst)
    print(f"wrote {dst} and {dst.with_suffix('.json')} ({model.config['kind']}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters)")

