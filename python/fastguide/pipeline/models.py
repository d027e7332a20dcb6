"""Models for a sampling run: load each from a checkpoint, a shipped name or a preset, and
check that it can play its role before any sampling starts.

Roles: "model" (a UNet that predicts noise: the base model), "upsampler" (a super-resolution
UNet), "classifier" (a noisy classifier for classifier guidance) and "weak model" (the weaker
version of the model that autoguidance steers away from). A checkpoint of the wrong kind for
its role, a diffusion model whose output cannot be read as ε (or ε and Σ), or an image size
other than the model's own are errors that name the option.
"""
import dataclasses
import json
import pathlib
import warnings

import torch

from .. import assets
from ..nn import presets
from ..nn.checkpoint import CheckpointError, load_checkpoint

__all__ = ["LoadedModel", "ModelSpecError", "load_model", "ROLE_KINDS"]

ROLE_KINDS = {"model": ("unet",), "upsampler": ("superres",), "classifier": ("classifier",),
              "weak model": ("unet",)}
_KIND_NAMES = {"unet": "a diffusion UNet", "superres": "a super-resolution UNet",
               "classifier": "a classifier"}


class ModelSpecError(ValueError):
    """A model argument that cannot be used for its role (the message names the option)."""


@dataclasses.dataclass
class LoadedModel:
    model: object
    info: dict | None       # the training record (.train.json), if any
    origin: str             # what the user gave, for messages
    random_weights: bool = False


def _read_info(path):
    sidecar = path.with_suffix(".train.json")
    if not sidecar.exists():
        return None
    try:
        return json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSpecError(f"cannot read the training record {sidecar}: {e}") from None


def _load_spec(spec, option, device, overrides):
    path = pathlib.Path(str(spec))
    if path.is_file():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = load_checkpoint(path, device=device, **overrides)
            except CheckpointError as e:
                raise ModelSpecError(f"{option} {spec}: {e}") from None
        for w in caught:  # e.g. heads assumed for a custom architecture: say which option
            print(f"fastguide: warning: {option} {spec}: {w.message}")
        return LoadedModel(model, _read_info(path), str(spec))
    if path.exists():
        raise ModelSpecError(f"{option} {spec} is not a file")
    if str(spec) in assets.names():
        return LoadedModel(assets.load(str(spec), device=device, **overrides),
                           assets.train_info(str(spec)), str(spec))
    try:
        with torch.device(device):  # built in place: no 500M-parameter init on the CPU first
            model = presets.create(str(spec), **overrides).eval()
    except KeyError:
        looks_like_path = "/" in str(spec) or path.suffix in (".pt", ".pth", ".safetensors",
                                                              ".ckpt", ".bin")
        if looks_like_path:
            raise ModelSpecError(f"{option}: checkpoint {spec} does not exist") from None
        raise ModelSpecError(f"{option}: unknown model {spec!r}: not a file, a shipped model "
                             f"({', '.join(assets.names())}) or a preset "
                             f"({', '.join(presets.names())})") from None
    return LoadedModel(model, None, str(spec), random_weights=True)


def _check_role(loaded, role, option):
    kind = loaded.model.config["kind"]
    if kind not in ROLE_KINDS[role]:
        hint = {("model", "superres"): "; pass it as --upsampler",
                ("model", "classifier"): "; pass it as --classifier",
                ("classifier", "unet"): "; pass it as --model",
                ("upsampler", "unet"): "; a base model goes to --model"}.get((role, kind), "")
        raise ModelSpecError(f"{option} {loaded.origin} is {_KIND_NAMES[kind]}, but {option} "
                             f"takes {_KIND_NAMES[ROLE_KINDS[role][0]]}{hint}")
    if kind in ("unet", "superres"):
        m = loaded.model
        channels = m.config["in_channels"]
        if m.out_channels not in (channels, 2 * channels):
            raise ModelSpecError(
                f"{option} {loaded.origin}: its first convolution takes {channels} image "
                f"channels but its output has {m.out_channels}; a diffusion model's output is "
                f"ε ({channels} channels) or ε and Σ ({2 * channels}); is this the right file?")


def _check_size(loaded, option, image_size, allow_other_size):
    """Set the sampling size: the model's own unless image_size is given."""
    config = loaded.model.config
    native = config.get("image_size")
    if image_size is None:
        return
    if native is None or native == image_size:
        config["image_size"] = image_size
        return
    resizable = config["kind"] != "classifier" or config.get("pool") != "attention"
    if not allow_other_size or not resizable:
        why = ("" if resizable else " (its attention pool is fixed to that size)")
        hint = (" (pass --allow-other-size to sample a convolutional model at another size)"
                if resizable else "")
        raise ModelSpecError(f"{option} {loaded.origin} was built for {native}px images{why}; "
                             f"got an image size of {image_size}{hint}")
    config["image_size"] = image_size


def load_model(spec, role="model", device="cpu", option=None, image_size=None,
               allow_other_size=False, **overrides):
    """A LoadedModel for spec (a checkpoint path of any suffix, a shipped model's name or a
    preset name, which gets random weights), checked for its role. overrides go to the loader
    (num_heads, num_head_channels, dtype, ...)."""
    option = option or f"--{role.replace(' ', '-')}"
    if role not in ROLE_KINDS:
        raise ValueError(f"role must be one of {list(ROLE_KINDS)}, got {role!r}")
    loaded = _load_spec(spec, option, device, {k: v for k, v in overrides.items()
                                               if v is not None})
    _check_role(loaded, role, option)
    _check_size(loaded, option, image_size, allow_other_size)
    return loaded
