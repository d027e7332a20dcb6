"""Fine-tuning from a released checkpoint: `fastguide train --init CKPT`.

    model     load_checkpoint(CKPT): a guided-diffusion .pt (config inferred from the state
              dict, heads and image size from the flags or the matching preset) or a fastguide
              .safetensors (config from its JSON), in float32, strictly loaded
    EMA       starts from the same weights, or from --init-ema CKPT (e.g. the EMA weights a
              model was released with)
    process   from CKPT's .train.json when it has one; otherwise --noise-schedule must be given
              (guided-diffusion's released models: linear, except 64x64: cosine; 1000 steps)

Adding classifier-free guidance to a class-conditional checkpoint (--p-uncond > 0): the label
embedding gains row K for the null label, initialised to zero (the time embedding alone) or to
the mean of the K class rows (--null-init mean). The K class rows are untouched, so the model's
conditional outputs are bit-identical to the checkpoint's until training changes them.
"""
import json
import pathlib

import torch

from ..nn.checkpoint import load_checkpoint, model_from_state_dict

__all__ = ["load_init", "init_diffusion_info", "add_null_class"]


def add_null_class(model, init="zero"):
    """A copy of a class-conditional UNet with a null class (row K of the label embedding):
    zero, or the mean of the K class rows."""
    if init not in ("zero", "mean"):
        raise ValueError(f"null-class init must be 'zero' or 'mean', got {init!r}")
    if model.config.get("num_classes") is None or not hasattr(model, "null_label"):
        raise ValueError("a null class (for --p-uncond) needs a class-conditional diffusion "
                         "model, and this one is unconditional")
    extended = model_from_state_dict(model.state_dict(), dict(model.config, null_class=True))
    if init == "mean":
        with torch.no_grad():
            emb = extended.label_emb.weight
            emb[model.num_classes] = emb[:model.num_classes].mean(dim=0)
    return extended


def load_init(path, overrides, null_class=False, null_init=None, what="--init"):
    """(model in float32, whether a null class was added) from a checkpoint file.

    overrides: config fields no shape reveals (num_heads, image_size, ...); null_class: the
    model must have a null class (added with null_init when the checkpoint has none)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    model = load_checkpoint(path, dtype=torch.float32, **overrides)
    has_null = getattr(model, "null_label", None) is not None
    if null_init is not None and (has_null or not null_class):
        raise ValueError(f"--null-init applies only when {what} gets a null class it does not "
                         f"have (--p-uncond > 0 or --null-class); {path} "
                         f"{'already has one' if has_null else 'gets none'}")
    if null_class and not has_null:
        return add_null_class(model, null_init or "zero"), True
    return model, False


def init_diffusion_info(path):
    """The 'diffusion' entry of the checkpoint's .train.json, or None."""
    sidecar = pathlib.Path(path).with_suffix(".train.json")
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text())["diffusion"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f"{sidecar} is not a fastguide .train.json (no 'diffusion' entry)") from None
